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
