"""Polygons of a class raster fed in strips equal those of the whole raster."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from rasterio.features import shapes
from rasterio.transform import from_origin

from backend.raster.polygons import StripPolygonizer


def test_strips_give_the_polygons_of_the_whole_raster() -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (12, 9)).repeat(5, axis=0).repeat(5, axis=1).astype(np.uint8)  # 60 x 45
    classes[rng.random(classes.shape) < 0.05] = 255
    classes[:, 20] = 1  # a region that runs through every strip
    confidence = rng.random(classes.shape).astype(np.float32)
    transform = from_origin(1000.0, 2000.0, 2.0, 2.0)
    polygonizer = StripPolygonizer(transform, 60)
    pieces = []
    for row in range(0, 60, 7):  # strips of 7 rows cut regions everywhere
        pieces += polygonizer.add_strip(classes[row:row + 7], confidence[row:row + 7], row)
    pieces += polygonizer.finish()
    whole = [(shapely.geometry.shape(g), int(v)) for g, v in
             shapes(classes, mask=classes != 255, connectivity=4, transform=transform)]
    assert len(pieces) == len(whole)
    assert sorted((p.class_id, round(p.geometry.area, 6)) for p in pieces) == sorted(
        (v, round(g.area, 6)) for g, v in whole)
    assert sum(p.pixels for p in pieces) == (classes != 255).sum()
    assert sum(p.confidence_sum for p in pieces) == pytest.approx(float(confidence[classes != 255].sum()), rel=1e-6)
    river = max((p for p in pieces if p.class_id == 1), key=lambda p: p.pixels)
    assert river.geometry.bounds[1] == 2000.0 - 120
    assert river.geometry.bounds[3] == 2000.0


def whole_raster_polygons(classes: np.ndarray, transform: object) -> list[tuple[int, shapely.Geometry]]:
    return [(int(v), shapely.geometry.shape(g)) for g, v in
            shapes(classes, mask=classes != 255, connectivity=4, transform=transform)]


@pytest.mark.parametrize("strip_rows", [1, 3, 16])
def test_regions_that_fork_and_join_across_strips_are_the_whole_raster_polygons(
        strip_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A U joined only below, an inverted U split only below, two squares touching at a corner only
    (4-connected: two polygons), and speckle; each final polygon is unioned at most once."""
    classes = np.zeros((16, 12), dtype=np.uint8)
    classes[2:9, 1] = classes[2:9, 4] = classes[8, 1:5] = 1  # a U: two arms that meet in row 8
    classes[10, 6:11] = classes[10:15, 6] = classes[10:15, 10] = 2  # an inverted U: one top, two legs
    classes[3, 7] = classes[4, 8] = 3  # corner contact only
    rng = np.random.default_rng(4)
    noisy = rng.random(classes.shape) < 0.08
    classes[noisy & (classes == 0)] = 4
    classes[0, 0] = 255
    transform = from_origin(0.0, 16.0, 1.0, 1.0)
    calls = []
    union_all = shapely.union_all
    monkeypatch.setattr(shapely, "union_all", lambda parts, *a, **k: calls.append(len(parts)) or union_all(parts))
    polygonizer = StripPolygonizer(transform, classes.shape[0])
    pieces = []
    for row in range(0, classes.shape[0], strip_rows):
        pieces += polygonizer.add_strip(classes[row:row + strip_rows], np.ones(classes[row:row + strip_rows].shape,
                                                                                dtype=np.float32), row)
    pieces += polygonizer.finish()
    whole = whole_raster_polygons(classes, transform)
    assert len(pieces) == len(whole)
    for class_id, geometry in whole:  # every region of the whole raster, once, as one polygon
        (match,) = [p for p in pieces if p.class_id == class_id and p.geometry.equals(geometry)]
        assert match.pixels == round(geometry.area)
        assert match.mean_confidence == 1.0
    assert len(calls) <= len(pieces)
