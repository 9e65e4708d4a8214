"""Training tiles around the labels on a grid anchored to the raster, which label covers each pixel, and
each tile's targets for a chosen subset of the labels (the folds themselves are :mod:`.split`'s)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window
from torch import Tensor

from ..errors import UserError
from ..raster.bands import BandNormalisation, percentile_normalisation, read_bands
from ..raster.labels import NO_LABEL, LabelSet, rasterize_features
from ..raster.resample import recorded_gsd, resolve_gsd, working_grid, working_source

#: Fewer training pixels than this in a class cannot teach the head that class.
MIN_CLASS_TRAIN_PX = 4
#: Marks a pixel that the loss and the metrics ignore.
IGNORE = -100
#: Largest side, in pixels, of the decimated read that the band normalisation is computed on.
NORMALISATION_READ_PX = 1024


@dataclass
class TileSample:
    """One grid tile: its bands (until its features are computed), every band's values for the per-pixel
    baseline, the label feature under each pixel, and the backbone features."""

    window: Window
    raw: np.ndarray | None  # (3, H, W) float32, the backbone's bands
    valid: np.ndarray  # (H, W) bool
    feature_px: np.ndarray  # (H, W) int32, label feature index or NO_LABEL
    band_values: np.ndarray | None = None  # (bands, H, W) float32, all bands of the raster
    features: list[Tensor] = field(default_factory=list)
    def targets(self, labels: LabelSet, use: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """(H, W) int64 class indices where a feature selected by ``use`` lies, :data:`IGNORE` elsewhere and
        where ``exclude`` (an (H, W) bool, e.g. the pixels a training label covers) is set."""
        target = np.full(self.feature_px.shape, IGNORE, dtype=np.int64)
        labelled = (self.feature_px != NO_LABEL) & self.valid
        chosen = labelled.copy()
        chosen[labelled] = use[self.feature_px[labelled]]
        if exclude is not None:
            chosen &= ~exclude
        target[chosen] = labels.class_index[self.feature_px[chosen]]
        return target

    def cover(self, labels: LabelSet, use: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
        """(H, W) bool: the pixels that a feature selected by ``use`` covers, also where another feature
        drawn over it wins the pixel (a held-out pixel under a training label is not held out)."""
        return rasterize_features(labels.subset(use), self.window, transform) != NO_LABEL


@dataclass(frozen=True)
class TrainingResolution:
    """The resolution training reads the raster at: what the head records (``gsd_m``; None for rectangular
    pixels kept as they are), whether tiles are resampled, and a warning when the user's choice differs from
    the backbone's pretraining resolution."""

    gsd_m: float | None
    resampled: bool
    warning: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"gsd_m": self.gsd_m, "resampled": self.resampled}


@contextmanager
def training_source(src: rasterio.io.DatasetReader, requested: float | None,
                    backbone_gsd: float | None) -> Iterator[tuple[Any, TrainingResolution]]:
    """The raster as ``train`` reads it, the way ``segment`` reads it (:mod:`..raster.resample`): on the grid
    of ``requested`` metres (0: the raster's own), else of the backbone's pretraining resolution, else the
    raster itself. Labels are then rasterised on that grid, so tiles, labels and the head's recorded
    resolution agree."""
    gsd_m, warning = resolve_gsd(requested, backbone_gsd, "the backbone was pretrained at")
    grid = working_grid(src, gsd_m)
    with working_source(src, grid) as source:
        yield source, TrainingResolution(recorded_gsd(src, grid), grid is not None, warning)


def grid_windows(area: Window, tile_px: int, raster_hw: tuple[int, int]) -> list[Window]:
    """Tiles of a grid anchored at the raster's origin (``tile_px`` apart) that meet ``area``; the last
    row and column are shifted inwards to stay inside the raster. The same tile always gets the same
    window, whatever the labels, so its cached features are found again after a new label."""
    height, width = raster_hw
    tile_h, tile_w = min(tile_px, height), min(tile_px, width)
    rows = range(int(area.row_off) // tile_px, math.ceil((area.row_off + area.height) / tile_px))
    cols = range(int(area.col_off) // tile_px, math.ceil((area.col_off + area.width) / tile_px))
    windows: list[Window] = []
    for r in rows:
        for c in cols:
            window = Window(min(c * tile_px, width - tile_w), min(r * tile_px, height - tile_h), tile_w, tile_h)
            if window not in windows:
                windows.append(window)
    return windows


def label_tiles(src: rasterio.io.DatasetReader, labels: LabelSet, area: Window, tile_px: int,
                bands: tuple[int, ...]) -> list[TileSample]:
    """Grid tiles over the labels' window that hold at least one labelled valid pixel."""
    samples = []
    for window in grid_windows(area, tile_px, (src.height, src.width)):
        feature_px = rasterize_features(labels, window, src.transform)
        if not (feature_px != NO_LABEL).any():
            continue
        raw, valid = read_bands(src, window, bands)
        if ((feature_px != NO_LABEL) & valid).any():
            band_values, _ = read_all_bands(src, window)
            samples.append(TileSample(window, raw, valid, feature_px, band_values))
    if not samples:
        raise UserError("Every labelled pixel is nodata in the raster; draw labels over valid pixels")
    return samples


def read_all_bands(src: rasterio.io.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Every band of ``window`` as float32 (bands, H, W) and its valid mask (what the per-pixel baseline sees)."""
    data = src.read(window=window, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.asarray(data.filled(0), dtype=np.float32)
    valid &= np.isfinite(values).all(axis=0)
    values[:, ~valid] = 0.0
    return values, valid


def raster_normalisation(src: rasterio.io.DatasetReader, bands: tuple[int, ...], seed: int) -> BandNormalisation:
    """Percentiles of the bands over the whole raster (a decimated read), not over the labelled tiles:
    the normalisation, and so every tile's cached features, must not change when a label is added."""
    scale = max(1.0, max(src.height, src.width) / NORMALISATION_READ_PX)
    shape = (len(bands), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    data = src.read(list(bands), out_shape=shape, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.asarray(data.filled(0), dtype=np.float32)
    valid &= np.isfinite(values).all(axis=0)
    return percentile_normalisation([(values, valid)], bands, seed)


def check_labels(labels: LabelSet, min_labels: int) -> None:
    """Refuse label sets no head can be trained on, with a message that says what to draw."""
    if len(labels.classes) < 2:
        raise UserError(f"Training needs labels of at least two classes; the labels layer has only "
                        f"'{labels.classes[0].name}'. Draw labels of another class")
    if len(labels.geometries) < min_labels:
        raise UserError(f"Training needs at least {min_labels} labels; the labels layer has "
                        f"{len(labels.geometries)}. Draw more labels")


def check_training_pixels(labels: LabelSet, train_targets: list[np.ndarray]) -> np.ndarray:
    """Training pixels per class; a user error when a class has too few or fewer than two classes remain."""
    counts = np.zeros(len(labels.classes), dtype=np.int64)
    for target in train_targets:
        values = target[target >= 0]
        counts += np.bincount(values, minlength=len(labels.classes))
    present = [c.name for c, n in zip(labels.classes, counts) if n > 0]
    if len(present) < 2:
        only = f"only '{present[0]}'" if present else "none"
        raise UserError(f"Training needs labels of at least two classes over valid pixels of the raster; found "
                        f"{only}. Draw labels of another class")
    few = [f"'{c.name}' ({n} px)" for c, n in zip(labels.classes, counts) if n < MIN_CLASS_TRAIN_PX]
    if few:
        raise UserError(f"Too few labelled pixels to train: {', '.join(few)}; each class needs at least "
                        f"{MIN_CLASS_TRAIN_PX} pixels for training. Draw larger or more labels")
    return counts
