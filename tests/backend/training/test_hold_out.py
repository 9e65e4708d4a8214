"""Spatial hold-out: whole labels, in blocks; validation pixels are never pixels of a training label; tiles on
a grid anchored to the raster."""

from __future__ import annotations

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from backend.raster.labels import NO_LABEL, labels_on_raster, rasterize_features, read_labels
from backend.training.samples import IGNORE, grid_windows, label_tiles, spatial_hold_out
from tests.backend.test_train_segment import LABELS, pixel_box, write_labels
from tests.conftest import SAMPLE_SCENE


def test_held_out_labels_are_whole_and_never_overlap_training_pixels(tmp_path) -> None:
    # A held-out candidate overlapping a training polygon: the overlap must not be validated.
    labels_list = LABELS + [("water", pixel_box(360, 30, 400, 55)), ("marsh", pixel_box(300, 200, 340, 240))]
    path = write_labels(tmp_path / "labels.gpkg", labels_list)
    with rasterio.open(SAMPLE_SCENE) as src:
        local, area, _ = labels_on_raster(read_labels(str(path)), src)
        for seed in range(6):
            hold_out = spatial_hold_out(local, src.transform, 256, 0.3, seed)
            held = hold_out.held_out
            for k in range(len(local.classes)):
                members = local.class_index == k
                if members.sum() >= 2:
                    assert 0 < held[members].sum() < members.sum()  # some, never all, of a class
                else:
                    assert not held[members].any()
                    assert not hold_out.validated[k]
            samples = label_tiles(src, local, held, area, 128, (3, 2, 1))
            for sample in samples:
                train = sample.targets(local, ~held)
                val = sample.targets(local, held, exclude_training=True)
                training_cover = rasterize_features(local.subset(~held), sample.window, src.transform) != NO_LABEL
                assert not (val != IGNORE)[training_cover].any()
                assert not ((train != IGNORE) & (val != IGNORE)).any()
                # Every validation pixel lies on a held-out label, every training pixel on a training label.
                assert held[sample.feature_px[val != IGNORE]].all()
                assert not held[sample.feature_px[train != IGNORE]].any()


def test_labels_in_one_block_are_held_out_together() -> None:
    from backend.raster.labels import LabelClass, LabelSet

    boxes = [shapely.box(0, -10, 10, 0), shapely.box(20, -30, 30, -20),  # block (0, 0) at 100 px
             shapely.box(500, -10, 510, 0), shapely.box(520, -30, 530, -20)]  # block (0, 5)
    labels = LabelSet(tuple(shapely.geometry.mapping(b) for b in boxes), np.zeros(4, dtype=np.int64),
                      (LabelClass(1, "a", "#000000"),), None)
    for seed in range(5):
        hold_out = spatial_hold_out(labels, rasterio.Affine.scale(1, -1), 100, 0.5,
                                    seed)
        assert hold_out.held_out.tolist() in ([True, True, False, False], [False, False, True, True])


def test_grid_tiles_do_not_depend_on_the_labels_window() -> None:
    small = grid_windows(Window(300, 20, 50, 40), 128, (640, 640))
    large = grid_windows(Window(200, 0, 300, 200), 128, (640, 640))
    assert small == [Window(256, 0, 128, 128)]
    assert set(small) <= set(large)
    # The last column is shifted inwards, and is always the same window.
    assert grid_windows(Window(690, 0, 5, 5), 128, (640, 700)) == [Window(572, 0, 128, 128)]
