"""Multi-modal inputs on one grid: a high-resolution image, a Sentinel-2 and a Sentinel-1 time series, each
optional, resampled by GDAL's warper onto a common grid so that one tile of the grid is one SkySense sample.

The grid has ``grid_gsd_m`` metre cells in the CRS of the first input (in the order hr, s2, s1; a UTM zone
when that CRS is geographic) and covers the area of interest, or the intersection of the inputs' extents.
The Sentinel series are read on the grid itself; the high-resolution image on the same grid refined by an
integer factor (its own resolution, at most :data:`MAX_HR_FACTOR`), so that its encoder sees detail. Every
read goes through a :class:`rasterio.vrt.WarpedVRT` (bilinear for imagery) and one window at a time: memory
does not grow with the area.

Bands are normalised per band to ``2 (x - p2) / (p98 - p2) - 1`` with the 2nd and 98th percentiles over the
area (all dates of a series pooled), and the values used are returned for the provenance; a model whose
configuration carries its training statistics (the official checkpoints) gets ``(x / scale - mean) / std``
instead, the same affine map with ``low = (mean - std) scale`` and ``high = (mean + std) scale``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform, transform_bounds
from rasterio.windows import Window

from ..errors import UserError
from .area import AreaOfInterest, pixel_size_m, utm_crs
from .band_mapping import default_band_mapping
from .dates import acquisition_date, day_of_year
from .inspect import open_raster
from .sensors import is_landsat, landsat_descriptions

#: The largest refinement of the grid for the high-resolution image (e.g. 10 m grid -> 1.25 m image).
MAX_HR_FACTOR = 8
#: Longest side of the decimated read that the normalisation percentiles are computed from.
STATS_SIDE_PX = 256
PERCENTILES = (2.0, 98.0)
MODALITY_NAMES = {"hr": "high-resolution", "s2": "Sentinel-2", "s1": "Sentinel-1"}


@dataclass(frozen=True)
class ModalityInputs:
    """One modality: its rasters (one for hr, one per date for a series), their dates and 1-based bands."""

    name: str  # "hr", "s2" or "s1"
    paths: tuple[str, ...]
    dates: tuple[datetime.date | None, ...]
    bands: tuple[int, ...]
    date_sources: tuple[str, ...] = ()  # "given", "metadata", "filename" or "" per raster
    #: With an encoder's band mask: the encoder's bands and which of them the rasters hold (``bands`` are the
    #: held ones, in the encoder's order); empty when every band is held.
    wanted: tuple[str, ...] = ()
    present: tuple[bool, ...] = ()

    @property
    def missing_bands(self) -> list[str]:
        """The encoder's bands these rasters lack (zero-filled and masked), in the encoder's order."""
        return [band for band, held in zip(self.wanted, self.present) if not held]

    @property
    def band_names(self) -> list[str]:
        """The encoder's names of the bands read (``bands``), when known."""
        return [band for band, held in zip(self.wanted, self.present) if held]

    @property
    def temporal(self) -> bool:
        return self.name != "hr"

    @property
    def days_of_year(self) -> list[int]:
        """Indices of P_DTPE (eq. 2), one per raster; 1 for an undated high-resolution image is never used."""
        return [day_of_year(d) if d is not None else 1 for d in self.dates]

    def describe(self) -> dict[str, Any]:
        described = {"paths": list(self.paths), "dates": [d.isoformat() if d else None for d in self.dates],
                     "date_sources": list(self.date_sources), "bands": list(self.bands)}
        if self.missing_bands:
            described.update(band_names=self.band_names, missing_bands=self.missing_bands)
        return described


def split_list(text: str | None) -> list[str]:
    """``"a.tif, b.tif"`` -> ``["a.tif", "b.tif"]``; None or blank -> []."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_dates(text: str | None, count: int, label: str) -> list[datetime.date] | None:
    given = split_list(text)
    if not given:
        return None
    if len(given) != count:
        raise UserError(f"{label}: {len(given)} dates for {count} rasters; give one date (YYYY-MM-DD) per raster")
    try:
        return [datetime.date.fromisoformat(d) for d in given]
    except ValueError as exc:
        raise UserError(f"{label}: a date is not YYYY-MM-DD ({exc})") from None


def _parse_bands(text: str | None, count: int, wanted: Sequence[str], label: str, path: str,
                 allow_missing: bool = False) -> list[int | None] | None:
    """1-based bands, one per wanted band; with ``allow_missing`` a 0 marks a band the raster lacks (None)."""
    given = split_list(text)
    if not given:
        return None
    try:
        bands = [int(b) for b in given]
    except ValueError:
        raise UserError(f"{label}: bands must be 1-based band numbers, got {text!r}") from None
    if len(bands) != len(wanted):
        zero = "; 0 for a band the raster lacks" if allow_missing else ""
        raise UserError(f"{label}: {len(bands)} bands given; the model reads {len(wanted)} ({', '.join(wanted)})"
                        f"{zero}")
    bad = [b for b in bands if not 1 <= b <= count and not (allow_missing and b == 0)]
    if bad:
        raise UserError(f"{label}: '{path}' has {count} bands, so band {bad[0]} does not exist")
    if all(b == 0 for b in bands):
        raise UserError(f"{label}: every band is 0 (missing); give at least one band")
    return [b or None for b in bands]


@dataclass(frozen=True)
class RasterInputs:
    """What one raster of a modality brings: its 1-based bands in the encoder's order, and its date with
    where it was found ("metadata", "filename" or "" when none)."""

    path: str
    bands: tuple[int, ...]
    date: datetime.date | None
    date_source: str
    present: tuple[bool, ...] = ()  # per wanted band, with a band mask; empty: all held
    sensor: str = ""  # "landsat" when the bands were read as Landsat OLI's (backend.raster.sensors)


def raster_inputs(name: str, path: str, wanted_bands: Sequence[str], bands: str | None = None,
                  allow_missing: bool = False) -> RasterInputs:
    """One raster of a modality: refused without CRS or without the bands the encoder reads (unless
    ``allow_missing``, an encoder with a band mask: then only a raster without any of them); its date from
    the metadata tags, else the file name (None when neither holds one). A Landsat 8/9 raster's bands are
    read as the Sentinel-2 bands they stand for (:mod:`backend.raster.sensors`)."""
    label = MODALITY_NAMES[name]
    sensor = ""
    with open_raster(path) as src:
        if src.crs is None:
            raise UserError(f"The {label} raster '{path}' has no CRS; assign one so it can be placed on the grid")
        own = _parse_bands(bands, src.count, wanted_bands, label, path, allow_missing)
        if own is None and name == "s2" and is_landsat(path, src.tags(), src.descriptions):
            sensor = "landsat"
            try:
                own = default_band_mapping(landsat_descriptions(src.descriptions, src.count), wanted_bands,
                                           "Landsat", allow_missing)
            except UserError as exc:
                raise UserError(f"'{path}': {exc}") from None
        if own is None:
            # For the optical image the colour interpretation names red, green and blue most surely
            # (a description such as "B04 red" names a Sentinel-2 band, not the colour).
            colours = [ci.name if ci.name in ("red", "green", "blue") else None for ci in src.colorinterp]
            if name == "hr" and {"red", "green", "blue"} <= set(colours):
                descriptions = colours
            else:
                descriptions = [d or c for d, c in zip(src.descriptions, colours)]
            try:
                own = default_band_mapping(descriptions, wanted_bands, label, allow_missing)
            except UserError as exc:
                raise UserError(f"'{path}': {exc}") from None
        date, source = acquisition_date(path, src.tags())
    present = tuple(b is not None for b in own) if None in own else ()
    return RasterInputs(path, tuple(int(b) for b in own if b is not None), date, source, present, sensor)


def modality_inputs(name: str, paths: Sequence[str], wanted_bands: Sequence[str], dates: str | None = None,
                    bands: str | None = None, allow_missing: bool = False) -> ModalityInputs:
    """Check one modality's rasters and find their dates and bands.

    Dates: ``dates`` (comma-separated YYYY-MM-DD, one per raster), else each raster's metadata tags, else its
    file name; a series raster without any is refused, naming it. Bands: ``bands`` (1-based), else the band
    descriptions (or colour interpretations) matched to ``wanted_bands``; every raster of a series must
    have the same bands. A raster without CRS is refused. ``allow_missing``: the encoder has a band mask, so
    rasters that lack some of ``wanted_bands`` are read with the rest (:attr:`ModalityInputs.missing_bands`).
    """
    label = MODALITY_NAMES[name]
    if name == "hr" and len(paths) > 1:
        raise UserError("Give one high-resolution image (a series is read for Sentinel-2 and Sentinel-1 only)")
    explicit = _parse_dates(dates, len(paths), label)
    found_dates: list[datetime.date | None] = []
    sources: list[str] = []
    mapping: list[int] | None = None
    present: tuple[bool, ...] = ()
    for index, path in enumerate(paths):
        raster = raster_inputs(name, path, wanted_bands, bands, allow_missing)
        if mapping is not None and (list(raster.bands) != mapping or raster.present != present):
            raise UserError(f"The {label} rasters hold their bands in different orders ('{path}' differs from "
                            f"'{paths[0]}'); give the bands explicitly or make them alike")
        mapping, present = list(raster.bands), raster.present
        if explicit is not None:
            found_dates.append(explicit[index])
            sources.append("given")
        else:
            if raster.date is None and name != "hr":
                raise UserError(f"No acquisition date for the {label} raster '{path}': none in its metadata or "
                                "file name; enter the dates (YYYY-MM-DD, one per raster)")
            found_dates.append(raster.date)
            sources.append(raster.date_source)
    return ModalityInputs(name, tuple(paths), tuple(found_dates), tuple(mapping or ()), tuple(sources),
                          tuple(wanted_bands) if present else (), present)


def missing_band_warnings(modalities: Sequence[ModalityInputs]) -> list[str]:
    """One line per modality whose rasters lack some of the encoder's bands (read zero-filled and masked)."""
    warnings = []
    for m in modalities:
        missing = m.missing_bands
        if missing:
            warnings.append(f"The {MODALITY_NAMES[m.name]} input lacks the bands {', '.join(missing)} of the model's "
                            f"{len(m.wanted)}: it reads {', '.join(m.band_names)} and treats the rest as missing "
                            "(band mask); expect a less accurate map than with every band")
    return warnings


@dataclass(frozen=True)
class GridSpec:
    """The common grid: ``width`` x ``height`` cells of ``gsd_m`` metres from ``transform`` in ``crs``."""

    crs: CRS
    transform: rasterio.Affine
    width: int
    height: int
    gsd_m: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)[:4]

    def lonlat(self, window: Window) -> tuple[float, float]:
        """Longitude and latitude (degrees) of a window's centre: the location that picks the region."""
        x, y = self.transform @ (window.col_off + window.width / 2, window.row_off + window.height / 2)
        lon, lat = transform(self.crs, CRS.from_epsg(4326), [x], [y])
        return float(lon[0]), float(lat[0])


def _fmt(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def common_grid(modalities: Sequence[ModalityInputs], area: AreaOfInterest | None, gsd_m: float) -> GridSpec:
    """The grid over ``area`` (else the intersection of all inputs' extents) at ``gsd_m`` metres; inputs that
    do not overlap, or an area outside them, are user errors."""
    if gsd_m <= 0:
        raise UserError(f"The grid's cell size must be positive, got {gsd_m} m")
    paths = [p for m in modalities for p in m.paths]
    extents: list[tuple[str, CRS, tuple[float, float, float, float]]] = []
    for path in paths:
        with open_raster(path) as src:
            extents.append((path, src.crs, tuple(src.bounds)))
    crs = extents[0][1]
    if crs.is_geographic:
        west, south, east, north = transform_bounds(crs, CRS.from_epsg(4326), *extents[0][2])
        crs = utm_crs((west + east) / 2, (south + north) / 2)
    _, metres_per_unit = crs.linear_units_factor
    step = gsd_m / metres_per_unit
    left, bottom, right, top = -math.inf, -math.inf, math.inf, math.inf
    for _path, src_crs, bounds in extents:
        b = transform_bounds(src_crs, crs, *bounds, densify_pts=21)
        left, bottom, right, top = max(left, b[0]), max(bottom, b[1]), min(right, b[2]), min(top, b[3])
        if left >= right or bottom >= top:
            listing = "; ".join(f"'{Path(p).name}' {_fmt(transform_bounds(c, crs, *bb))}" for p, c, bb in extents)
            raise UserError(f"The inputs do not overlap (extents in {crs.to_string()}: {listing}); choose rasters "
                            "of the same place")
    if area is not None:
        if area.crs is None:
            raise UserError("The area has no CRS; save it with one (any CRS works, it is reprojected)")
        a = area.to_crs(crs).bounds
        inter = max(left, a[0]), max(bottom, a[1]), min(right, a[2]), min(top, a[3])
        if inter[0] >= inter[2] or inter[1] >= inter[3]:
            common = _fmt((left, bottom, right, top))
            raise UserError(f"The area {_fmt(a)} lies outside the inputs' common extent {common} "
                            f"(in {crs.to_string()})")
        left, bottom, right, top = inter
    # Snap to multiples of the cell size, so that grids of neighbouring runs line up.
    x0, y1 = math.floor(left / step) * step, math.ceil(top / step) * step
    width = max(1, math.ceil((right - x0) / step - 1e-9))
    height = max(1, math.ceil((y1 - bottom) / step - 1e-9))
    return GridSpec(crs, rasterio.Affine(step, 0.0, x0, 0.0, -step, y1), width, height, float(gsd_m))


#: The grid's cell size when none is given.
DEFAULT_GRID_GSD_M = 10.0
#: With a high-resolution image alone, one grid cell holds this many of its pixels on a side: its detail is
#: read, not averaged onto 10 m cells. Half the bundled high-resolution encoder's patch (4 px): the few-shot
#: head and its band context then see crowns and shadows of a 0.1 m image (docs/quality.md: NEON 0.48 -> 0.55
#: mIoU at K = 3, SpaceNet level), for four times the cells of a 4 px grid.
HR_ALONE_PIXELS_PER_CELL = 2


def native_pixel_m(path: str) -> float | None:
    """The smaller side of a raster's pixel in metres at its centre (None when it cannot be told)."""
    with open_raster(path) as src:
        centre_y = (src.bounds.bottom + src.bounds.top) / 2
        size = pixel_size_m(src.crs, src.transform, centre_y)
    return float(min(size)) if size else None


def default_grid_gsd_m(params: dict[str, Any], modalities: Sequence[ModalityInputs]) -> float:
    """``grid_gsd_m`` when given; else :data:`HR_ALONE_PIXELS_PER_CELL` pixels of a high-resolution image given
    alone (a 0.1 m aerial image gets a 0.2 m grid), else :data:`DEFAULT_GRID_GSD_M`."""
    given = params.get("grid_gsd_m")
    if given:
        return float(given)
    if [m.name for m in modalities] == ["hr"]:
        native = native_pixel_m(modalities[0].paths[0])
        if native:
            return HR_ALONE_PIXELS_PER_CELL * native
    return DEFAULT_GRID_GSD_M


def hr_factor(hr: ModalityInputs, grid: GridSpec) -> int:
    """How much finer than the grid the high-resolution image is read: its own resolution, 1..MAX_HR_FACTOR."""
    native_m = native_pixel_m(hr.paths[0]) or grid.gsd_m
    return int(min(MAX_HR_FACTOR, max(1, round(grid.gsd_m / native_m))))


@dataclass
class Normalisation:
    """Per-band (low, high) of one modality: x' = 2 (x - low) / (high - low) - 1. ``statistics``: the model's
    own (mean, std, scale, source) when the map comes from them, else None (percentiles over the area)."""

    low: np.ndarray
    high: np.ndarray
    statistics: dict[str, Any] | None = None
    #: The encoder's names of the bands it covers, when the rasters lack some (a band mask): a head's stored
    #: normalisation is only applied again to rasters holding the same bands.
    band_names: list[str] | None = None

    @classmethod
    def from_statistics(cls, statistics: dict[str, Any]) -> Normalisation:
        """(x / scale - mean) / std written as 2 (x - low) / (high - low) - 1."""
        mean, std = np.asarray(statistics["mean"], np.float64), np.asarray(statistics["std"], np.float64)
        scale = float(statistics.get("scale", 1.0))
        return cls(((mean - std) * scale).astype(np.float32), ((mean + std) * scale).astype(np.float32),
                   dict(statistics))

    def apply(self, x: np.ndarray) -> np.ndarray:
        low, high = self.low.reshape(-1, 1, 1), self.high.reshape(-1, 1, 1)  # x: (..., C, H, W)
        return (2.0 * (x - low) / np.maximum(high - low, 1e-6) - 1.0).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """``p2`` / ``p98``: the low and high of the map (what a trained head records and applies again);
        with the model's statistics, those too."""
        data: dict[str, Any] = {"p2": [float(v) for v in self.low], "p98": [float(v) for v in self.high]}
        if self.statistics is not None:
            data["statistics"] = self.statistics
        if self.band_names is not None:
            data["band_names"] = list(self.band_names)
        return data


@dataclass
class ModalityStack:
    """A modality opened on the grid: one WarpedVRT per raster on the (refined) grid, padded to whole tiles."""

    inputs: ModalityInputs
    vrts: list[WarpedVRT]
    factor: int
    normalisation: Normalisation | None = None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values (T, C, h, w) float32 and validity (T, h, w) bool of a grid window (scaled by ``factor``)."""
        f = self.factor
        fine = Window(window.col_off * f, window.row_off * f, window.width * f, window.height * f)
        values, valid = [], []
        for vrt in self.vrts:
            data = vrt.read(list(self.inputs.bands), window=fine, masked=True).astype(np.float32)
            mask = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.filled(0)).all(axis=0)
            values.append(np.where(mask[None], data.filled(0), 0).astype(np.float32))
            valid.append(mask)
        return np.stack(values), np.stack(valid)


@dataclass
class InputStack:
    """All given modalities on one grid (a context manager: it holds the rasters open)."""

    grid: GridSpec
    modalities: dict[str, ModalityStack]
    tile_px: int
    _exit: ExitStack = field(default_factory=ExitStack, repr=False)
    #: What the check of the bands against the model's training statistics found (backend.raster.band_check).
    band_warnings: list[str] = field(default_factory=list)

    def __enter__(self) -> InputStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def compute_normalisation(self, only: Sequence[str] | None = None) -> None:
        """2nd and 98th percentiles per band over the area, from a decimated read of every raster (of the
        modalities in ``only``, when given)."""
        for stack in self.modalities.values():
            if only is not None and stack.inputs.name not in only:
                continue
            samples: list[np.ndarray] = []
            for vrt in stack.vrts:
                scale = max(1.0, max(self.grid.width, self.grid.height) * stack.factor / STATS_SIDE_PX)
                shape = (max(1, round(self.grid.height * stack.factor / scale)),
                         max(1, round(self.grid.width * stack.factor / scale)))
                window = Window(0, 0, self.grid.width * stack.factor, self.grid.height * stack.factor)
                data = vrt.read(list(stack.inputs.bands), window=window, out_shape=(len(stack.inputs.bands), *shape),
                                masked=True, resampling=Resampling.nearest)
                valid = ~np.ma.getmaskarray(data).any(axis=0)
                samples.append(np.asarray(data.data, dtype=np.float64)[:, valid])
            values = np.concatenate(samples, axis=1)
            values = values[:, np.isfinite(values).all(axis=0)]
            if values.shape[1] == 0:
                raise UserError(f"The {MODALITY_NAMES[stack.inputs.name]} rasters hold no valid pixel in the area")
            low, high = np.percentile(values, PERCENTILES, axis=1)
            stack.normalisation = Normalisation(low.astype(np.float32), high.astype(np.float32),
                                                band_names=stack.inputs.band_names or None)

    def set_normalisation(self, stored: dict[str, dict[str, list[float]]]) -> list[str]:
        """Use the normalisation a trained head recorded (see :attr:`Normalisation.to_json`) for the
        modalities it covers; returns the modalities it does not cover (computed by
        :meth:`compute_normalisation` instead)."""
        missing = []
        for name, stack in self.modalities.items():
            values = stored.get(name)
            if (values is None or len(values["p2"]) != len(stack.inputs.bands)
                    or (values.get("band_names") or None) != (stack.inputs.band_names or None)):
                missing.append(name)
                continue
            stack.normalisation = Normalisation(np.asarray(values["p2"], dtype=np.float32),
                                                np.asarray(values["p98"], dtype=np.float32), values.get("statistics"),
                                                values.get("band_names"))
        return missing

    def set_statistics(self, statistics: dict[str, dict[str, Any]], only: Sequence[str] | None = None) -> list[str]:
        """Use a model's training statistics (per modality ``{"scale", "mean", "std"}``, see
        :class:`~..models.skysense.config.EncoderConfig`) for the modalities in ``only`` that have them;
        returns the modalities without (to be normalised by :meth:`compute_normalisation`)."""
        missing = []
        for name, stack in self.modalities.items():
            if only is not None and name not in only:
                continue
            stats = statistics.get(name)
            if not stats or len(stats["mean"]) != len(stack.inputs.bands):
                missing.append(name)
                continue
            stack.normalisation = Normalisation.from_statistics(stats)
        return missing

    def tiles(self) -> list[Window]:
        """Windows of ``tile_px`` grid cells covering the grid, row by row (edge tiles reach into the padding)."""
        return [Window(col, row, self.tile_px, self.tile_px)
                for row in range(0, self.grid.height, self.tile_px) for col in range(0, self.grid.width, self.tile_px)]

    def read_batch(self, windows: Sequence[Window]) -> tuple[dict[str, Any], np.ndarray]:
        """Model inputs for tiles (numpy, normalised; ``lonlat``, ``{m}_doy``, ``{m}_valid`` for series) and
        the validity of every grid cell (B, tile, tile): a cell any modality covers on any date."""
        import torch

        inputs: dict[str, Any] = {"lonlat": torch.tensor([self.grid.lonlat(w) for w in windows], dtype=torch.float64)}
        cell_valid = np.zeros((len(windows), self.tile_px, self.tile_px), dtype=bool)
        for name, stack in self.modalities.items():
            reads = [stack.read(w) for w in windows]
            values = np.stack([r[0] for r in reads])  # (B, T, C, H, W)
            valid = np.stack([r[1] for r in reads])  # (B, T, H, W)
            if stack.normalisation is not None:
                values = np.stack([stack.normalisation.apply(v) for v in values])
                values = np.where(valid[:, :, None], values, 0.0).astype(np.float32)
            if stack.inputs.present:  # bands the rasters lack: zero after normalisation, and the presence mask
                full = np.zeros((*values.shape[:2], len(stack.inputs.present), *values.shape[3:]), np.float32)
                full[:, :, list(np.flatnonzero(stack.inputs.present))] = values
                values = full
                inputs[f"{name}_bands"] = torch.tensor([stack.inputs.present] * len(windows), dtype=torch.bool)
            f = stack.factor
            coarse = valid.reshape(*valid.shape[:2], self.tile_px, f, self.tile_px, f).any(axis=(3, 5))
            cell_valid |= coarse.any(axis=1)
            tensor = torch.from_numpy(np.ascontiguousarray(values))
            if stack.inputs.temporal:
                inputs[name] = tensor
                inputs[f"{name}_doy"] = torch.tensor([stack.inputs.days_of_year] * len(windows))
                inputs[f"{name}_valid"] = torch.from_numpy(valid.any(axis=(2, 3)))
            else:
                inputs[name] = tensor[:, 0]
        return inputs, cell_valid


def open_stack(modalities: Sequence[ModalityInputs], grid: GridSpec, tile_px: int) -> InputStack:
    """Open every raster through a WarpedVRT on the grid (bilinear), padded to whole tiles."""
    if not modalities:
        raise UserError("Give at least one input: a high-resolution image, a Sentinel-2 or a Sentinel-1 series")
    if tile_px < 1:
        raise UserError(f"The tile size must be positive, got {tile_px}")
    padded_w = math.ceil(grid.width / tile_px) * tile_px
    padded_h = math.ceil(grid.height / tile_px) * tile_px
    stack = InputStack(grid, {}, tile_px)
    try:
        for inputs in modalities:
            factor = hr_factor(inputs, grid) if inputs.name == "hr" else 1
            vrts = []
            for path in inputs.paths:
                src = stack._exit.enter_context(open_raster(path))
                options: dict[str, Any] = {}
                if src.nodata is None and all(m.name != "alpha" for m in src.colorinterp):
                    # Without nodata or alpha the warper would fill outside the source with 0 and call it valid.
                    options["add_alpha"] = True
                vrts.append(stack._exit.enter_context(WarpedVRT(
                    src, crs=grid.crs, transform=grid.transform @ rasterio.Affine.scale(1 / factor),
                    width=padded_w * factor, height=padded_h * factor, resampling=Resampling.bilinear, **options)))
            stack.modalities[inputs.name] = ModalityStack(inputs, vrts, factor)
    except BaseException:
        stack._exit.close()
        raise
    return stack
