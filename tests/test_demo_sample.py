"""The demo's sample labels: the bundled GeoPackage is what scripts/make_sample_labels.py writes, it lies on the
sample scene, and both the backend and the layout of the plugin's labels layer read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
import shapely

from backend.raster.labels import labels_on_raster, read_labels
from scripts.make_sample_labels import CLASSES, POLYGONS, write_labels

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "sample"
LABELS = SAMPLE / "sentinel2_coast_labels.gpkg"
SCENE = SAMPLE / "sentinel2_coast.tif"


def _rows(path: Path, layer: str) -> tuple[list, list]:
    meta, _, wkb, fields = pyogrio.raw.read(str(path), layer=layer)
    geometries = list(shapely.from_wkb(wkb)) if wkb is not None else []
    return geometries, [list(f) for f in fields]


def test_the_bundled_file_is_what_the_script_writes(tmp_path):
    fresh = write_labels(tmp_path / "labels.gpkg")
    for layer in ("labels", "classes"):
        bundled_geometries, bundled_fields = _rows(LABELS, layer)
        fresh_geometries, fresh_fields = _rows(fresh, layer)
        assert bundled_fields == fresh_fields
        assert all(a.equals_exact(b, 1e-6) for a, b in zip(bundled_geometries, fresh_geometries))
        assert len(bundled_geometries) == len(fresh_geometries)


def test_layout_of_the_plugins_labels_layer():
    layers = dict(pyogrio.list_layers(str(LABELS)))
    assert layers == {"labels": "MultiPolygon", "classes": None}
    info = pyogrio.read_info(str(LABELS), layer="labels")
    assert list(info["fields"]) == ["class_id", "class_name", "colour"]
    _, fields = _rows(LABELS, "classes")
    assert list(zip(*fields)) == [tuple(c) for c in CLASSES]


def test_labels_lie_on_the_scene_with_three_to_five_polygons_per_class():
    labels = read_labels(str(LABELS))
    assert [c.name for c in labels.classes] == [name for _, name, _ in CLASSES]
    assert all(3 <= n <= 5 for n in labels.features_per_class())
    assert sum(len(rings) for rings in POLYGONS.values()) == len(labels.geometries)
    with rasterio.open(SCENE) as src:
        inside, _, outside = labels_on_raster(labels, src)
        scene_box = shapely.box(*src.bounds)
    assert outside == 0
    assert len(inside.geometries) == len(labels.geometries)
    assert all(scene_box.contains(shapely.geometry.shape(g)) for g in labels.geometries)
    # Each polygon is at least a few pixels wide: 10 m pixels, so 0.01 km2 is 100 pixels.
    areas = np.array([shapely.geometry.shape(g).area for g in labels.geometries])
    assert areas.min() >= 10_000
