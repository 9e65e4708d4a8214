"""Spatial cross-validation folds of drawn labels, defined in map units.

Neighbouring labels of one class are near copies of each other: holding one out while training on its
neighbour measures memory, not mapping. So labels are grouped into square blocks of ``block_m`` metres
(by the label's representative point, in a metric CRS: the labels' own when it is projected, else the UTM
zone of their centre) and a block's labels of one class are always held out together. The folds depend on
the labels layer alone (geometries, classes, the seed), never on a raster or a model's tile size, so the
SatDiFuser and SkySense trainers hold out exactly the same labels.

Each class's blocks are shuffled and dealt round-robin over k folds, so every fold holds out about 1/k of
every class and each label is held out exactly once. k follows the number of blocks per class (at most
:data:`MAX_FOLDS`); with fewer than :data:`MIN_FOLDS` there is one split instead, and a class with one
block of one label is never held out (it cannot be validated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

from ..errors import UserError
from ..raster.area import utm_crs
from ..raster.labels import LabelSet

#: Folds of the cross-validation at most, and the fewest that make one (else a single split).
MAX_FOLDS = 5
MIN_FOLDS = 3
#: Side of the spatial blocks, in metres: labels of one class closer than about this are held out together.
DEFAULT_BLOCK_M = 1000.0
#: Share of each class's blocks held out by a single split (at least one, never all).
SINGLE_SPLIT_SHARE = 1 / 3

CROSS_VALIDATION = "cross-validation"
SINGLE_SPLIT = "single split"
NOT_VALIDATED = "none"


@dataclass(frozen=True)
class SpatialFolds:
    """In which fold each label (by its id in the labels layer) is held out; -1 when never."""

    ids: np.ndarray  # (labels,) int, the labels' ids
    fold: np.ndarray  # (labels,) int
    block: np.ndarray  # (labels,) int, the spatial block of each label
    class_index: np.ndarray  # (labels,) int
    num_classes: int
    count: int  # folds: 0 when nothing can be held out
    block_m: float

    @property
    def scheme(self) -> str:
        if self.count == 0:
            return NOT_VALIDATED
        return CROSS_VALIDATION if self.count > 1 else SINGLE_SPLIT

    def held_out(self, fold: int, ids: np.ndarray) -> np.ndarray:
        """Which of the labels ``ids`` (a subset, in any order) fold ``fold`` holds out."""
        fold_of = dict(zip(self.ids.tolist(), self.fold.tolist()))
        return np.array([fold_of.get(int(i), -1) == fold for i in ids], dtype=bool)

    def validated(self, fold: int | None = None) -> np.ndarray:
        """(classes,) bool: the classes with a held-out label in ``fold`` (in any fold when None)."""
        chosen = self.fold >= 0 if fold is None else self.fold == fold
        flags = np.zeros(self.num_classes, dtype=bool)
        flags[np.unique(self.class_index[chosen])] = True
        return flags

    def held_out_per_class(self) -> np.ndarray:
        return np.bincount(self.class_index[self.fold >= 0], minlength=self.num_classes)

    def to_json(self) -> dict[str, Any]:
        """What a result records: the scheme and, for every label, the fold that held it out."""
        return {"scheme": self.scheme, "folds": self.count, "block_m": self.block_m,
                "held_out_labels": int((self.fold >= 0).sum()), "labels": int(len(self.ids)),
                "fold_of_label": {str(int(i)): (int(f) if f >= 0 else None) for i, f in zip(self.ids, self.fold)}}


def check_block_m(block_m: float) -> float:
    if not block_m > 0:
        raise UserError(f"hold_out_block_m must be a positive number of metres; got {block_m}")
    return float(block_m)


def metric_points(labels: LabelSet) -> np.ndarray:
    """(labels, 2) representative points of the labels in metres: the labels' CRS when it is projected,
    else the UTM zone of their centre (a labels layer without CRS is taken to be in metres)."""
    points = [shapely.geometry.shape(g).representative_point() for g in labels.geometries]
    xs, ys = [p.x for p in points], [p.y for p in points]
    crs = labels.crs
    if crs is None:
        return np.column_stack([xs, ys]).astype(np.float64)
    if crs.is_projected:
        _, metres_per_unit = crs.linear_units_factor
        return np.column_stack([xs, ys]).astype(np.float64) * metres_per_unit
    wgs84 = CRS.from_epsg(4326)
    lons, lats = transform_points(crs, wgs84, xs, ys)
    zone = utm_crs(float(np.mean(lons)), float(np.mean(lats)))
    xs_m, ys_m = transform_points(wgs84, zone, lons, lats)
    return np.column_stack([xs_m, ys_m]).astype(np.float64)


def blocks_of(points_m: np.ndarray, block_m: float) -> np.ndarray:
    """The block id of each point on a ``block_m`` grid anchored at the origin of its CRS."""
    cells = np.floor(points_m / block_m).astype(np.int64)
    _, block = np.unique(cells, axis=0, return_inverse=True)
    return block.reshape(-1)


def _units(members: np.ndarray, block: np.ndarray) -> list[np.ndarray]:
    """A class's units of hold-out: its labels grouped by block, or one unit per label when they all share
    one block (a compact cluster of labels is then split label by label rather than not at all)."""
    units = [members[block[members] == b] for b in np.unique(block[members])]
    if len(units) < 2:
        units = [np.array([m]) for m in members]
    return units


def spatial_folds(labels: LabelSet, block_m: float = DEFAULT_BLOCK_M, seed: int = 0,
                  folds: int = 0) -> SpatialFolds:
    """The folds of ``labels`` (see the module's docstring); ``folds`` = 0 chooses k from the labels, a
    positive number asks for that many (at most the blocks of the class with most; 1 is a single split)."""
    if block_m <= 0:
        raise ValueError(f"block_m must be positive, got {block_m}")
    rng = np.random.default_rng(seed)
    count = len(labels.geometries)
    block = blocks_of(metric_points(labels), block_m) if count else np.zeros(0, dtype=np.int64)
    units_per_class = [_units(np.flatnonzero(labels.class_index == k), block)
                       for k in range(len(labels.classes))]
    splittable = [len(u) for u in units_per_class if len(u) >= 2]
    fold = np.full(count, -1, dtype=np.int64)
    if not splittable:
        k = 0
    elif folds > 0:
        k = min(folds, max(splittable))
    else:
        k = min(MAX_FOLDS, int(np.median(splittable)))
        k = k if k >= MIN_FOLDS else 1
    for units in units_per_class:
        if len(units) < 2 or k == 0:
            continue
        order = rng.permutation(len(units))
        if k == 1:
            chosen = order[:min(len(units) - 1, max(1, round(SINGLE_SPLIT_SHARE * len(units))))]
            for u in chosen:
                fold[units[u]] = 0
            continue
        offset = int(rng.integers(k))
        for j, u in enumerate(order):
            fold[units[u]] = (offset + j) % k
    return SpatialFolds(ids=np.asarray(labels.ids, dtype=np.int64), fold=fold, block=block,
                        class_index=np.asarray(labels.class_index, dtype=np.int64),
                        num_classes=len(labels.classes), count=k, block_m=float(block_m))


def describe(folds: SpatialFolds) -> str:
    """One line that says what a figure rests on."""
    held = int((folds.fold >= 0).sum())
    block = f"{folds.block_m / 1000:g} km" if folds.block_m >= 1000 else f"{folds.block_m:g} m"
    if folds.scheme == CROSS_VALIDATION:
        return (f"cross-validated over {folds.count} spatial folds ({block} blocks): each of {held} labels held "
                "out once")
    if folds.scheme == SINGLE_SPLIT:
        return f"one split: the figure rests on {held} held-out label{'s' if held != 1 else ''} ({block} blocks)"
    return "not validated: no class has two labels, so none can be held out"
