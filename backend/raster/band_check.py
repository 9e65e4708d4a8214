"""The statistics of the bands a model was trained on, and the check of an area's bands against them.

A model scales each band between bounds it learned on its training data (the 2nd and 98th percentiles)
and clips what lies outside. Data of another kind (float reflectance 0-1 against 16-bit digital numbers,
8-bit against 16-bit) is then clipped almost everywhere and the map is wrong everywhere, without a
word. So training records :func:`band_statistics` (data types, percentiles, valid pixels) in the
model's config, and every job compares them with the area's before it runs (:func:`check_bands`): it
refuses data whose scale differs by :data:`REFUSE_SCALE_RATIO` or more (one line), and warns when more
than :data:`WARN_CLIPPED_SHARE` of the area's pixels would be clipped. Models saved before the
statistics existed are checked against their stored bounds alone. ``rescale_per_area`` (an explicit
option) normalises by the area's own percentiles instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import UserError

#: The percentiles recorded per band.
STATISTICS_PERCENTILES = (1, 2, 25, 50, 75, 98, 99)
#: Longest side of the decimated read the statistics come from.
STATISTICS_SIDE_PX = 1024
#: Scales (median, or half the 2nd-98th percentile range when larger) this many times apart cannot be
#: the same kind of data: refused.
REFUSE_SCALE_RATIO = 10.0
#: Share of the area's pixels outside the model's band range above which a job warns.
WARN_CLIPPED_SHARE = 0.25


def _read_sample(src: rasterio.io.DatasetReader, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
    """Valid values (bands, N) float64 of a decimated read of ``window`` (the whole raster by default)."""
    window = window or Window(0, 0, src.width, src.height)
    scale = max(1.0, max(int(window.height), int(window.width)) / STATISTICS_SIDE_PX)
    shape = (len(bands), max(1, round(int(window.height) / scale)), max(1, round(int(window.width) / scale)))
    data = src.read(list(bands), window=window, out_shape=shape, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.asarray(data.filled(0), dtype=np.float64)[:, valid]
    return values[:, np.isfinite(values).all(axis=0)]


def statistics_of(values: np.ndarray, dtypes: Sequence[str], bands: Sequence[int]) -> dict[str, Any]:
    """The JSON-able statistics of valid values (bands, N)."""
    percentiles = np.percentile(values, STATISTICS_PERCENTILES, axis=1) if values.shape[1] else None
    return {"bands": [int(b) for b in bands], "dtypes": list(dtypes), "valid_px": int(values.shape[1]),
            "percentiles": {str(p): [float(v) for v in row] for p, row in zip(STATISTICS_PERCENTILES, percentiles)}
            if percentiles is not None else {}}


def band_statistics(sources: Any, bands: Sequence[int]) -> dict[str, Any]:
    """Data types and percentiles of ``bands`` over ``sources`` (an open rasterio dataset, a path, or a list
    of them, such as a series' dates), from a decimated read: what a model stores about its training data."""
    if isinstance(sources, (str, rasterio.io.DatasetReader)) or hasattr(sources, "read"):
        sources = [sources]
    samples, dtypes = [], []
    for source in sources:
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            with rasterio.open(source) as src:
                samples.append(_read_sample(src, bands))
                dtypes = [src.dtypes[b - 1] for b in bands]
        else:
            samples.append(_read_sample(source, bands))
            dtypes = [source.dtypes[b - 1] for b in bands]
    return statistics_of(np.concatenate(samples, axis=1), dtypes, bands)


def modality_band_statistics(modalities: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """:func:`band_statistics` of each SkySense modality (objects with ``name``, ``paths`` and ``bands``)."""
    return {m.name: band_statistics(list(m.paths), m.bands) for m in modalities}


def _scale(median: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(np.abs(median), (high - low) / 2), 1e-12)


def _number(value: float) -> str:
    return f"{value:.3g}"


def check_bands(trained: dict[str, Any] | None, low: Sequence[float], high: Sequence[float], area: np.ndarray,
                area_dtypes: Sequence[str], bands: Sequence[int], what: str = "", clips: bool = True) -> list[str]:
    """Compare the area's valid values (bands, N) with what the model was trained on: its recorded
    ``trained`` statistics (None for an older model: its bounds ``low``/``high`` alone). Refuses data of
    another scale with one line; returns warnings (a large share of clipped pixels)."""
    if area.shape[1] == 0:
        return []
    low_a, high_a = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    percentiles = (trained or {}).get("percentiles") or {}
    trained_median = np.asarray(percentiles["50"], dtype=np.float64) if "50" in percentiles else (low_a + high_a) / 2
    trained_dtypes = (trained or {}).get("dtypes") or []
    area_p2, area_median, area_p98 = np.percentile(area, [2, 50, 98], axis=1)
    ratio = _scale(area_median, area_p2, area_p98) / _scale(trained_median, low_a, high_a)
    prefix = f"{what} " if what else ""
    for i, band in enumerate(bands):
        if ratio[i] >= REFUSE_SCALE_RATIO or ratio[i] <= 1 / REFUSE_SCALE_RATIO:
            trained_kind = f" {trained_dtypes[i]}" if i < len(trained_dtypes) else ""
            times = f"{ratio[i]:.3g} times larger" if ratio[i] > 1 else f"{1 / ratio[i]:.3g} times smaller"
            raise UserError(
                f"The model was trained on{trained_kind} {prefix}values around {_number(trained_median[i])} (band "
                f"{band}: 2nd-98th percentile {_number(low_a[i])}-{_number(high_a[i])}), but this area's band {band} "
                f"({area_dtypes[i] if i < len(area_dtypes) else '?'}) lies around {_number(area_median[i])}: data "
                f"of another scale ({times}). Give it data like the model's, or normalise by the area's own "
                "percentiles with the option rescale_per_area (--rescale-per-area)")
    # Per band (each clips about 4 % of its own training data), the worst band.
    clipped = float(((area < low_a[:, None]) | (area > high_a[:, None])).mean(axis=1).max())
    if clipped > WARN_CLIPPED_SHARE:
        fate = "and are clipped" if clips else "(far from what it learned)"
        return [f"{clipped:.0%} of the area's {prefix}pixels lie outside a band's range the model was trained on "
                f"{fate}: expect a wrong map there; the option rescale_per_area (--rescale-per-area) normalises by "
                "the area's own percentiles"]
    return []


def area_sample(src: Any, window: Window, bands: Sequence[int]) -> np.ndarray:
    """The valid values (bands, N) of a decimated read of ``window`` of ``src``."""
    return _read_sample(src, bands, window)


def stack_band_warnings(stack: Any, stored: dict[str, dict[str, list[float]]],
                        statistics: dict[str, dict[str, Any]]) -> list[str]:
    """:func:`check_bands` for each modality of a SkySense input stack (``backend.raster.stack.InputStack``)
    normalised by the model's ``stored`` bounds, against its recorded ``statistics``."""
    warnings: list[str] = []
    for name, modality in stack.modalities.items():
        bounds = stored.get(name)
        bands = list(modality.inputs.bands)
        if bounds is None or len(bounds.get("p2", [])) != len(bands):
            continue
        samples, dtypes = [], []
        for vrt in modality.vrts:
            samples.append(_read_sample(vrt, bands))
            dtypes = [vrt.dtypes[b - 1] for b in bands]
        values = np.concatenate(samples, axis=1)
        warnings += check_bands(statistics.get(name), bounds["p2"], bounds["p98"], values, dtypes, bands,
                                what=name.upper(), clips=False)
    return warnings
