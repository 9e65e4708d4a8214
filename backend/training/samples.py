"""Training tiles around the labels: their pixels, which label covers each pixel, and the spatial
hold-out of whole label features for validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.windows import Window
from torch import Tensor

from ..errors import UserError
from ..raster.bands import read_bands
from ..raster.labels import NO_LABEL, LabelSet, rasterize_features
from ..raster.tiles import tile_windows

#: Fewer training pixels than this in a class cannot teach the head that class.
MIN_CLASS_TRAIN_PX = 4
#: Marks a pixel that the loss and the metrics ignore.
IGNORE = -100


@dataclass
class TileSample:
    """One tile: raw bands (until its features are computed), the label feature under each pixel, and
    the cached backbone features."""

    window: Window
    raw: np.ndarray | None  # (3, H, W) float32
    valid: np.ndarray  # (H, W) bool
    feature_px: np.ndarray  # (H, W) int32, label feature index or NO_LABEL
    features: list[Tensor] = field(default_factory=list)

    def targets(self, labels: LabelSet, use: np.ndarray) -> np.ndarray:
        """(H, W) int64 class indices where a feature selected by ``use`` lies, :data:`IGNORE` elsewhere."""
        target = np.full(self.feature_px.shape, IGNORE, dtype=np.int64)
        labelled = (self.feature_px != NO_LABEL) & self.valid
        chosen = labelled.copy()
        chosen[labelled] = use[self.feature_px[labelled]]
        target[chosen] = labels.class_index[self.feature_px[chosen]]
        return target


def label_tiles(src: rasterio.io.DatasetReader, labels: LabelSet, area: Window, tile_px: int,
                bands: tuple[int, ...]) -> list[TileSample]:
    """Tiles (no overlap) over the labels' window that hold at least one labelled valid pixel."""
    samples = []
    for window in tile_windows(area, tile_px, 0, (src.height, src.width)):
        feature_px = rasterize_features(labels, window, src.transform)
        if not (feature_px != NO_LABEL).any():
            continue
        raw, valid = read_bands(src, window, bands)
        if ((feature_px != NO_LABEL) & valid).any():
            samples.append(TileSample(window, raw, valid, feature_px))
    if not samples:
        raise UserError("Every labelled pixel is nodata in the raster; draw labels over valid pixels")
    return samples


def hold_out_features(labels: LabelSet, fraction: float, seed: int) -> np.ndarray:
    """Validation features: in each class with two features or more, ``fraction`` of them (at least one,
    never all), drawn at random. Whole features are held out, so validation pixels are never
    neighbours of training pixels of the same drawn shape."""
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels.geometries), dtype=bool)
    if fraction <= 0:
        return held_out
    for k in range(len(labels.classes)):
        members = np.flatnonzero(labels.class_index == k)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        held_out[rng.choice(members, count, replace=False)] = True
    return held_out


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
