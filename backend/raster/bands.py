"""The three bands a diffusion backbone sees, and their per-band scaling to [-1, 1].

SatDiFuser feeds RGB only and normalises "each spectral band individually" (Sec. 4.1-4.2); Terrafuse
scales each band between its 2nd and 98th percentile over the training area, which a few bright or
dark outliers (clouds, shadows, saturated pixels) cannot stretch, and stores the bounds with the head
so that segmentation scales new pixels the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from ..errors import UserError

LOW_PERCENTILE = 2
HIGH_PERCENTILE = 98
#: At most this many pixels per band enter the percentiles.
MAX_STATISTICS_PX = 2_000_000


@dataclass(frozen=True)
class BandNormalisation:
    """Raster bands (1-based) fed as R, G, B, each mapped linearly from [low, high] to [-1, 1], clipped."""

    bands: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        scaled = (data.astype(np.float32, copy=False) - low) / (high - low)
        return np.clip(scaled, 0.0, 1.0) * 2.0 - 1.0

    def to_json(self) -> dict[str, list[float]]:
        return {"low": list(self.low), "high": list(self.high)}


def parse_bands(text: str | None, src: rasterio.io.DatasetReader) -> tuple[int, ...]:
    """Bands from "3,2,1" (one band is repeated to grey RGB); without a choice, the bands whose colour
    interpretation is red, green and blue, else the first three (the last repeated when fewer)."""
    if text:
        try:
            bands = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError:
            raise UserError(f"Bands must be band numbers separated by commas, like 3,2,1; got {text!r}") from None
        if len(bands) == 1:
            bands = bands * 3
        if len(bands) != 3:
            raise UserError(f"The backbone takes three bands (red, green, blue) or one; got {len(bands)}: {text}")
        outside = [b for b in bands if not 1 <= b <= src.count]
        if outside:
            raise UserError(f"The raster has bands 1..{src.count}; band {outside[0]} does not exist")
        return bands
    interp = list(src.colorinterp)
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return tuple(interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
    first = list(range(1, min(3, src.count) + 1))
    return tuple(first + [first[-1]] * (3 - len(first)))


def read_bands(src: rasterio.io.DatasetReader, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The bands over ``window`` as float32 (3, H, W) and a (H, W) mask of pixels valid in every band
    (not nodata, finite). Invalid pixels hold 0."""
    data = src.read(list(bands), window=window, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.asarray(data.filled(0), dtype=np.float32)
    valid &= np.isfinite(values).all(axis=0)
    values[:, ~valid] = 0.0
    return values, valid


def percentile_normalisation(samples: Sequence[tuple[np.ndarray, np.ndarray]], bands: Sequence[int],
                             seed: int = 0) -> BandNormalisation:
    """Per-band 2nd and 98th percentiles of the valid pixels of ``samples`` ((3, H, W), (H, W) pairs)."""
    values = np.concatenate([data[:, valid] for data, valid in samples], axis=1)
    if values.shape[1] == 0:
        raise UserError("The raster has no valid pixel under the labels (all nodata)")
    if values.shape[1] > MAX_STATISTICS_PX:
        pick = np.random.default_rng(seed).choice(values.shape[1], MAX_STATISTICS_PX, replace=False)
        values = values[:, pick]
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=1).astype(np.float64)
    # A constant band would divide by zero; any unit range maps it to -1 consistently.
    high = np.where(high > low, high, low + 1.0)
    return BandNormalisation(tuple(int(b) for b in bands), tuple(map(float, low)), tuple(map(float, high)))
