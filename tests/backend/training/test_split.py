"""Spatial folds in map units: whole labels, grouped in blocks of metres, each held out once; the same labels
held out whatever the raster or the model; validation pixels never pixels of a training label; tiles on a
grid anchored to the raster."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.windows import Window

from backend.errors import UserError
from backend.raster.labels import NO_LABEL, LabelClass, LabelSet, labels_on_raster, rasterize_features, read_labels
from backend.training.fewshot import LabelTiles
from backend.training.samples import IGNORE, grid_windows, label_tiles
from backend.training.split import (
    CROSS_VALIDATION,
    NOT_VALIDATED,
    SINGLE_SPLIT,
    check_block_m,
    describe,
    spatial_folds,
)
from tests.backend.rasters import write_raster
from tests.backend.test_train_segment import LABELS, pixel_box, write_labels
from tests.conftest import SAMPLE_SCENE

CLASSES = (LabelClass(1, "a", "#000000"), LabelClass(2, "b", "#ffffff"))


def squares(centres_m: list[tuple[float, float]], classes: list[int], side_m: float = 20.0,
            crs: str | None = "EPSG:32618") -> LabelSet:
    boxes = [shapely.box(x - side_m / 2, y - side_m / 2, x + side_m / 2, y + side_m / 2) for x, y in centres_m]
    return LabelSet(tuple(shapely.geometry.mapping(b) for b in boxes), np.asarray(classes, dtype=np.int64),
                    CLASSES, CRS.from_user_input(crs) if crs else None, np.arange(100, 100 + len(boxes)))


def scattered(count_per_class: int, seed: int = 0, spacing_m: float = 1500.0) -> LabelSet:
    """Labels of two classes, each in a block of its own (1500 m apart)."""
    rng = np.random.default_rng(seed)
    centres, classes = [], []
    for k in range(2):
        for j in range(count_per_class):
            centres.append((500_000 + j * spacing_m + rng.uniform(0, 300), 4_150_000 + k * 50_000))
            classes.append(k)
    return squares(centres, classes)


def test_each_label_is_held_out_exactly_once_and_every_fold_holds_out_every_class() -> None:
    labels = scattered(8)
    folds = spatial_folds(labels, 1000.0, seed=3)
    assert folds.scheme == CROSS_VALIDATION
    assert folds.count == 5
    assert (folds.fold >= 0).all()  # every label in exactly one fold (fold is a single index)
    for f in range(folds.count):
        held = folds.held_out(f, labels.ids)
        for k in range(2):
            members = labels.class_index == k
            assert 0 < held[members].sum() < members.sum()  # some, never all, of a class
    assert folds.validated().all()
    assert folds.held_out_per_class().tolist() == [8, 8]
    assert "5 spatial folds" in describe(folds)


def test_labels_in_one_block_are_held_out_together() -> None:
    # Two clusters of a class 5 km apart, two labels each, 30 m apart inside a cluster.
    labels = squares([(500_010, 4_150_010), (500_040, 4_150_040), (505_010, 4_150_010), (505_040, 4_150_040),
                      (510_010, 4_150_010), (510_040, 4_150_040)], [0, 0, 0, 0, 0, 0])
    for seed in range(5):
        folds = spatial_folds(labels, 1000.0, seed)
        assert folds.fold[0] == folds.fold[1]
        assert folds.fold[2] == folds.fold[3]
        assert folds.fold[4] == folds.fold[5]
        assert folds.count == 3


def test_the_split_is_in_metres_whatever_the_labels_crs() -> None:
    labels = scattered(6, seed=1)
    in_degrees = labels.to_crs(CRS.from_epsg(4326))
    in_feet = labels.to_crs(CRS.from_user_input("ESRI:102718"))  # NAD83 New York Long Island, US feet
    reference = spatial_folds(labels, 1000.0, seed=7)
    for other in (in_degrees, in_feet):
        folds = spatial_folds(other, 1000.0, seed=7)
        assert folds.fold.tolist() == reference.fold.tolist()
        assert folds.block.tolist() == reference.block.tolist()


def test_too_few_labels_give_one_split_or_none() -> None:
    two_each = scattered(2)
    folds = spatial_folds(two_each, 1000.0)
    assert folds.scheme == SINGLE_SPLIT
    assert folds.count == 1
    assert folds.held_out_per_class().tolist() == [1, 1]
    assert "rests on 2 held-out labels" in describe(folds)
    one_each = scattered(1)
    assert spatial_folds(one_each, 1000.0).scheme == NOT_VALIDATED
    assert not spatial_folds(one_each, 1000.0).validated().any()
    # Asked for: two folds of two labels per class is a cross-validation.
    assert spatial_folds(two_each, 1000.0, folds=2).scheme == CROSS_VALIDATION


def test_a_class_with_one_label_is_never_held_out() -> None:
    labels = squares([(500_000 + 2000 * i, 4_150_000) for i in range(7)], [0, 0, 0, 0, 0, 0, 1])
    folds = spatial_folds(labels, 1000.0)
    assert folds.fold[-1] == -1
    assert folds.validated().tolist() == [True, False]


def test_a_block_size_must_be_positive() -> None:
    with pytest.raises(UserError, match="hold_out_block_m"):
        check_block_m(0.0)


def test_the_same_labels_are_held_out_on_rasters_of_different_resolution(tmp_path) -> None:
    """The folds belong to the labels: on a 10 m and a 20 m raster of one area (as SatDiFuser's raster and
    SkySense's grid may be) the same labels are held out, with pixels in proportion."""
    labels_path = write_labels(tmp_path / "labels.gpkg", LABELS + [("field", pixel_box(200, 300, 240, 340))])
    labels = read_labels(str(labels_path))
    folds = spatial_folds(labels, 500.0, seed=4)
    held_pixels = {}
    for name, factor in (("fine", 1), ("coarse", 2)):
        with rasterio.open(SAMPLE_SCENE) as src:
            transform = src.transform @ rasterio.Affine.scale(factor)
            shape = (src.height // factor, src.width // factor)
        raster = write_raster(tmp_path / f"{name}.tif", np.ones((3, *shape), dtype=np.uint16), transform=transform)
        with rasterio.open(raster) as src:
            local, area, _ = labels_on_raster(labels, src)
            tiles = LabelTiles(label_tiles(src, local, area, 128, (1, 2, 3)), local, src.transform)
        held = folds.held_out(0, local.ids)
        assert local.ids[held].tolist() == labels.ids[folds.fold == 0].tolist()
        held_pixels[name] = sum(int((t != IGNORE).sum()) for t in tiles.targets(held, exclude_use=~held))
    assert held_pixels["fine"] == pytest.approx(4 * held_pixels["coarse"], rel=0.15)


def test_validation_pixels_are_never_pixels_of_a_training_label(tmp_path) -> None:
    # A held-out candidate overlapping a training polygon: the overlap must not be validated.
    labels_list = LABELS + [("water", pixel_box(360, 30, 400, 55)), ("marsh", pixel_box(300, 200, 340, 240))]
    labels = read_labels(str(write_labels(tmp_path / "labels.gpkg", labels_list)))
    with rasterio.open(SAMPLE_SCENE) as src:
        local, area, _ = labels_on_raster(labels, src)
        tiles = LabelTiles(label_tiles(src, local, area, 128, (3, 2, 1)), local, src.transform)
        for seed in range(4):
            folds = spatial_folds(labels, 300.0, seed, folds=2)
            for f in range(folds.count):
                held = folds.held_out(f, local.ids)
                train = tiles.targets(~held, exclude_use=held)
                val = tiles.targets(held, exclude_use=~held)
                for sample, t, v in zip(tiles.samples, train, val):
                    training_cover = rasterize_features(local.subset(~held), sample.window, src.transform) != NO_LABEL
                    assert not (v != IGNORE)[training_cover].any()
                    assert not ((t != IGNORE) & (v != IGNORE)).any()
                    assert held[sample.feature_px[v != IGNORE]].all()
                    assert not held[sample.feature_px[t != IGNORE]].any()


def test_grid_tiles_do_not_depend_on_the_labels_window() -> None:
    small = grid_windows(Window(300, 20, 50, 40), 128, (640, 640))
    large = grid_windows(Window(200, 0, 300, 200), 128, (640, 640))
    assert small == [Window(256, 0, 128, 128)]
    assert set(small) <= set(large)
    # The last column is shifted inwards, and is always the same window.
    assert grid_windows(Window(690, 0, 5, 5), 128, (640, 700)) == [Window(572, 0, 128, 128)]
