"""Training reads tiles and labels at the backbone's pretraining resolution, as segment does; the head records
it and segment maps at it. A head trained with DiffusionSat's per-tile metadata gets its tiles' own in segment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from backend.models.diffusion import DiffusionFeatureExtractor, registry
from backend.progress import Progress
from backend.raster.labels import NO_LABEL, labels_on_raster, read_labels
from backend.training.samples import label_tiles, training_source
from backend.worker import run_job
from tests.backend.rasters import write_raster
from tests.backend.segment_stand_in import smooth_image
from tests.backend.test_train_segment import write_labels

X0, Y0, PIXEL = 443330.0, 4173860.0, 20.0
QUICK = {"tile_px": 64, "timesteps": "1", "epochs": 2, "baseline": False, "preview": False}


def box(col0: int, row0: int, col1: int, row1: int) -> shapely.Geometry:
    """A rectangle on whole 20 m pixels of the test raster."""
    return shapely.box(X0 + col0 * PIXEL, Y0 - row1 * PIXEL, X0 + col1 * PIXEL, Y0 - row0 * PIXEL)


LABELS = [("water", box(4, 4, 20, 14)), ("water", box(40, 6, 56, 18)),
          ("field", box(6, 36, 22, 54)), ("field", box(38, 40, 58, 58)), ("water", box(14, 12, 30, 24))]


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    """A 64 x 64 px raster of 20 m pixels (with an acquisition date tag) and its labels."""
    image = write_raster(tmp_path / "scene20m.tif", smooth_image(64, 64, seed=5),
                         transform=from_origin(X0, Y0, PIXEL, PIXEL))
    with rasterio.open(image, "r+") as dst:
        dst.update_tags(ACQUISITION_DATE="2021-06-15")
    return {"image": image, "labels": write_labels(tmp_path / "labels.gpkg", LABELS)}


@pytest.fixture
def backbone_10m(tiny_backbone_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered backbone pretrained at 10 m (the tiny random one)."""
    config = registry.BackboneConfig(name="tiny-10m", source=str(tiny_backbone_dirs["v_prediction"]),
                                     source_kind="folder", tile_px=64, gsd_m=10.0)
    monkeypatch.setitem(registry.BACKBONES, config.name, config)
    return config.name


def test_labels_are_rasterised_on_the_backbones_grid(scene: dict[str, Path]) -> None:
    labels = read_labels(str(scene["labels"]))
    with rasterio.open(scene["image"]) as src, training_source(src, None, 10.0) as (source, resolution):
        assert resolution.gsd_m == 10.0
        assert resolution.resampled
        assert (source.width, source.height) == (128, 128)
        assert source.transform.a == 10.0
        local, area, _ = labels_on_raster(labels, source)
        samples = label_tiles(source, local, area, 64, (1, 2, 3))
        transform = source.transform
    geometries = [shapely.geometry.shape(g) for g in local.geometries]
    labelled = 0
    for sample in samples:
        assert sample.raw.shape == (3, 64, 64)
        # An independent rasterisation of the polygons on the 10 m grid: the later polygon wins.
        expected = rasterize([(g, i) for i, g in enumerate(geometries)], out_shape=(64, 64), fill=NO_LABEL,
                             transform=rasterio.windows.transform(sample.window, transform), dtype="int32")
        np.testing.assert_array_equal(sample.feature_px, expected)
        labelled += int((sample.feature_px != NO_LABEL).sum())
    # Every label lies on whole 20 m pixels: four 10 m pixels each.
    at_20m = rasterize(geometries, out_shape=(64, 64), transform=from_origin(X0, Y0, PIXEL, PIXEL))
    assert labelled == 4 * int(at_20m.sum())


def test_the_rasters_own_resolution_is_recorded_and_a_choice_against_the_backbone_warns(scene) -> None:
    with rasterio.open(scene["image"]) as src:
        with training_source(src, 0, 10.0) as (source, resolution):
            assert source is src
            assert resolution.gsd_m == 20.0
            assert not resolution.resampled
            assert "the backbone was pretrained at 10 m" in resolution.warning
        with training_source(src, None, None) as (source, resolution):  # no pretraining resolution: the raster's
            assert source is src
            assert resolution.gsd_m == 20.0
            assert resolution.warning == ""


def test_a_head_trained_at_the_backbones_10m_maps_at_10m(scene: dict[str, Path], backbone_10m: str,
                                                        tmp_path: Path) -> None:
    result = run_job("train", {"image": str(scene["image"]), "labels": str(scene["labels"]), "backbone": backbone_10m,
                               "out": str(tmp_path / "head"), "cache_dir": str(tmp_path / "cache"), **QUICK},
                     Progress())
    assert result["gsd_m"] == 10.0
    assert result["warnings"] == []
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["training"]["gsd_m"] == 10.0
    assert config["training"]["resampled"] is True
    # The training pixels were counted on the 10 m grid: four per labelled 20 m pixel.
    with rasterio.open(scene["image"]) as src:
        local, _, _ = labels_on_raster(read_labels(str(scene["labels"])), src)
        at_20m = rasterize([shapely.geometry.shape(g) for g in local.geometries], out_shape=(64, 64),
                           transform=src.transform)
    assert sum(config["training"]["training_px"]) == 4 * int(at_20m.sum())

    mapped = run_job("segment", {"image": str(scene["image"]), "model": str(tmp_path / "head"),
                                 "out": str(tmp_path / "map"), "polygons": False}, Progress())
    assert mapped["gsd_m"] == 10.0  # the head's resolution, without being asked
    assert mapped["tile_px"] == 64
    assert mapped["provenance"]["parameters"]["gsd_m"] == 10.0
    assert not [w for w in mapped["warnings"] if "gsd_m" in w]
    with rasterio.open(mapped["class_raster"]) as classes:
        assert classes.transform == from_origin(X0, Y0, PIXEL, PIXEL)  # written back on the raster's grid
        assert classes.shape == (64, 64)

    other = run_job("segment", {"image": str(scene["image"]), "model": str(tmp_path / "head"),
                                "out": str(tmp_path / "map20"), "polygons": False, "gsd_m": 20.0}, Progress())
    assert other["gsd_m"] is None  # the raster's own 20 m, as asked
    assert any("the head was trained at 10 m" in w for w in other["warnings"])


def _reference_metadata(lon: float, lat: float, gsd_m: float, year: int, month: int, day: int) -> list[float]:
    """DiffusionSat's normalisation (fmow_numerical_metadata, then metadata_normalize with scale 1000)."""
    return [1000 * (lon + 180) / 360, 1000 * (lat + 90) / 180, 1000 * gsd_m, 0.0,
            1000 * (year - 1980) / 120, 1000 * month / 12, 1000 * day / 31]


def test_the_tiles_own_metadata_reaches_the_unet_in_train_and_segment(scene: dict[str, Path], tmp_path: Path,
                                                                      tiny_backbone_dirs: dict[str, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    forward = DiffusionFeatureExtractor.forward

    def recording(self: DiffusionFeatureExtractor, images: Any, metadata: Any = None) -> Any:
        seen.append(None if metadata is None else metadata.detach().cpu().numpy().copy())
        return forward(self, images, metadata)

    monkeypatch.setattr(DiffusionFeatureExtractor, "forward", recording)
    backbone = str(tiny_backbone_dirs["diffusionsat"])
    result = run_job("train", {"image": str(scene["image"]), "labels": str(scene["labels"]), "backbone": backbone,
                               "out": str(tmp_path / "head"), "cache_dir": str(tmp_path / "cache"),
                               "metadata": "tile", "date": "2020-03-05", **QUICK}, Progress())
    lon, lat = (v[0] for v in warp_transform("EPSG:32618", "EPSG:4326", [X0 + 32 * PIXEL], [Y0 - 32 * PIXEL]))
    # One 64 px tile, the whole raster, at its own 20 m (the folder backbone records no resolution).
    assert len(seen) == result["cache"]["tiles_computed"] == 1
    np.testing.assert_allclose(seen[0][0], _reference_metadata(lon, lat, 20.0, 2020, 3, 5), rtol=1e-5)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["features"]["metadata"] == "tile"
    assert config["training"]["metadata"]["date"] == "2020-03-05"
    assert config["training"]["metadata"]["gsd_m"] == 20.0

    seen.clear()
    mapped = run_job("segment", {"image": str(scene["image"]), "model": str(tmp_path / "head"),
                                 "out": str(tmp_path / "map"), "polygons": False}, Progress())
    # Segment feeds each tile's own metadata; the date from the raster's tag this time.
    assert seen
    assert all(m is not None for m in seen)
    np.testing.assert_allclose(seen[0][0], _reference_metadata(lon, lat, 20.0, 2021, 6, 15), rtol=1e-5)
    assert mapped["provenance"]["metadata"]["date"] == "2021-06-15"
    assert mapped["provenance"]["metadata"]["date_source"] == "metadata"
