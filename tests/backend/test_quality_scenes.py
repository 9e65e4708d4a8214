"""The labelled scenes of the map-quality benchmark (benchmarks/scenes/): each folder is complete, its image is a
real georeferenced raster, and its labels are many, of several classes, spread over the scene and on valid
pixels of the image, in its CRS, readable by the backend as the dock writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.crs import CRS

from backend.raster.labels import read_labels

ROOT = Path(__file__).resolve().parents[2]
SCENES = ROOT / "benchmarks" / "scenes"
FOLDERS = sorted(p for p in SCENES.iterdir() if p.is_dir()) if SCENES.is_dir() else []
FILES = {"image.tif", "labels.gpkg", "scene.json", "LICENSE.md"}
KEYS = {"title": str, "sensor": str, "gsd_m": float, "bands": list, "date": (str, type(None)),
        "hold_out_block_m": float, "rgb_bands": list, "seen_by_bundled_models": bool, "source": str,
        "licence": str}


def test_there_are_at_least_four_scenes():
    assert len(FOLDERS) >= 4


@pytest.fixture(params=FOLDERS, ids=[p.name for p in FOLDERS])
def scene(request) -> Path:
    return request.param


def _meta(folder: Path) -> dict:
    return json.loads((folder / "scene.json").read_text())


def _labels(folder: Path) -> tuple[list, list[int], list[str], CRS]:
    meta, _, wkb, fields = pyogrio.raw.read(str(folder / "labels.gpkg"), layer="labels")
    return list(shapely.from_wkb(wkb)), list(fields[0]), list(fields[1]), CRS.from_user_input(meta["crs"])


def test_folder_holds_exactly_its_files(scene):
    assert {p.name for p in scene.iterdir()} == FILES
    assert (scene / "image.tif").stat().st_size < 2.2 * 2**20


def test_scene_json_has_its_keys_and_types(scene):
    meta = _meta(scene)
    assert set(meta) == set(KEYS)
    for key, kind in KEYS.items():
        assert isinstance(meta[key], kind), key
    if meta["date"] is not None:
        assert len(meta["date"]) == 10
        assert meta["date"][4] == meta["date"][7] == "-"
    assert "==" in meta["source"]


def test_image_is_a_georeferenced_compressed_tiled_raster_with_named_bands(scene):
    meta = _meta(scene)
    with rasterio.open(scene / "image.tif") as src:
        assert src.crs is not None
        assert src.crs.is_projected
        assert src.count == len(meta["bands"])
        assert list(src.descriptions) == meta["bands"]
        assert src.res[0] == pytest.approx(meta["gsd_m"])
        assert src.profile["compress"].lower() == "deflate"
        assert src.profile["tiled"]
        assert all(1 <= b <= src.count for b in meta["rgb_bands"])
        assert len(meta["rgb_bands"]) == 3
        blocks = (src.width * src.res[0] / meta["hold_out_block_m"]) * (src.height * src.res[1]
                                                                        / meta["hold_out_block_m"])
        assert 16 <= blocks <= 36


def test_labels_are_many_of_several_classes_in_the_images_crs(scene):
    geometries, ids, names, crs = _labels(scene)
    with rasterio.open(scene / "image.tif") as src:
        assert crs == src.crs
    assert len(geometries) >= 60
    _, _, _, class_fields = pyogrio.raw.read(str(scene / "labels.gpkg"), layer="classes")
    classes = dict(zip(class_fields[1], class_fields[0]))
    assert len(classes) >= 3
    counts = {name: names.count(name) for name in classes}
    assert min(counts.values()) >= 13, counts  # K = 10 training labels and at least 3 to score
    assert all(classes[name] == class_id for name, class_id in zip(names, ids))
    # The backend reads the file as it reads the dock's labels layer.
    labels = read_labels(str(scene / "labels.gpkg"))
    assert len(labels.geometries) == len(geometries)
    assert sorted(c.name for c in labels.classes) == sorted(classes)


def test_every_label_lies_inside_the_image_on_valid_pixels(scene):
    geometries, _, names, _ = _labels(scene)
    with rasterio.open(scene / "image.tif") as src:
        box = shapely.box(*src.bounds)
        data = src.read()
        nodata = src.nodata
        transform = src.transform
    invalid = np.all(data == nodata, axis=0) if nodata is not None else np.zeros(data.shape[1:], bool)
    for geometry, name in zip(geometries, names):
        assert box.contains(geometry), name
        inside = rasterio.features.geometry_mask([geometry], invalid.shape, transform, invert=True)
        assert inside.sum() >= 4, f"a {name} label covers {inside.sum()} pixels"
        assert not invalid[inside].any(), f"a {name} label covers nodata pixels"


def test_labels_are_spread_over_the_scene(scene):
    """The benchmark holds out spatial blocks: the labels must fall in many of them, not in one corner."""
    geometries, _, _, _ = _labels(scene)
    block = _meta(scene)["hold_out_block_m"]
    with rasterio.open(scene / "image.tif") as src:
        left, top = src.bounds.left, src.bounds.top
    cells = {(int((c.x - left) // block), int((top - c.y) // block)) for c in shapely.centroid(geometries)}
    assert len(cells) >= 8


def test_labels_of_different_classes_never_overlap(scene):
    geometries, _, names, _ = _labels(scene)
    tree = shapely.STRtree(geometries)
    left, right = tree.query(geometries, predicate="intersects")
    clashes = [(names[i], names[j]) for i, j in zip(left, right)
               if names[i] != names[j] and shapely.intersection(geometries[i], geometries[j]).area > 0]
    assert not clashes
