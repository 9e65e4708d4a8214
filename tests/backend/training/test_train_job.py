"""The train job with the feature cache: a new label computes only its tiles; the head's sidecar; labels
too few to validate; a head for another backbone refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.test_train_segment import LABELS, pixel_box, write_labels
from tests.conftest import SAMPLE_SCENE

QUICK = {"tile_px": 128, "timesteps": "1,100", "epochs": 2, "baseline": False, "preview": False}


def train(tmp_path: Path, labels: Path, backbone: Path, name: str, **extra: Any) -> dict[str, Any]:
    return run_job("train", {"image": str(SAMPLE_SCENE), "labels": str(labels), "backbone": str(backbone),
                             "out": str(tmp_path / name), "cache_dir": str(tmp_path / "cache"), **QUICK, **extra},
                   Progress())


@pytest.fixture
def extractor_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    forward = DiffusionFeatureExtractor.forward

    def counting(self: DiffusionFeatureExtractor, images: Any) -> Any:
        calls.append(int(images.shape[0]))
        return forward(self, images)

    monkeypatch.setattr(DiffusionFeatureExtractor, "forward", counting)
    return calls


def test_a_new_label_computes_only_its_own_tiles(tmp_path: Path, tiny_backbone_dirs: dict[str, Path],
                                                 extractor_calls: list[int]) -> None:
    backbone = tiny_backbone_dirs["v_prediction"]
    first = train(tmp_path, write_labels(tmp_path / "a.gpkg", LABELS), backbone, "head1")
    assert first["cache"]["tiles_computed"] == first["cache"]["tiles_total"] == len(extractor_calls)
    assert first["cache"]["tiles_cached"] == 0
    calls_before = len(extractor_calls)
    # One more water label in the south-west, on a tile no earlier label touches.
    more = write_labels(tmp_path / "b.gpkg", LABELS + [("water", pixel_box(20, 520, 60, 560))])
    second = train(tmp_path, more, backbone, "head2")
    assert second["cache"] == {**second["cache"], "tiles_total": first["cache"]["tiles_total"] + 1,
                               "tiles_computed": 1, "tiles_cached": first["cache"]["tiles_total"]}
    assert len(extractor_calls) == calls_before + 1
    # The sidecar says everything needed to use the head again.
    config = json.loads((tmp_path / "head2" / "config.json").read_text())
    for key in ("classes", "backbone", "fusion", "fusion_kwargs", "head", "timesteps", "blocks", "levels", "bands",
                "band_low", "band_high", "normalisation", "metrics", "created", "tile_px", "feature_info"):
        assert config[key] not in (None, "", [], {}), key
    assert {"name", "source", "sha256"} <= set(config["backbone"])
    assert all({"id", "name", "colour"} <= set(c) for c in config["classes"])
    assert config["metrics"]["miou"] == second["metrics"]["miou"]
    assert "whole raster" in config["normalisation"]


def test_labels_too_few_to_validate_give_a_message(tmp_path: Path, tiny_backbone_dirs: dict[str, Path]) -> None:
    one_each = [LABELS[0], LABELS[2]]  # a water and a marsh polygon
    result = train(tmp_path, write_labels(tmp_path / "l.gpkg", one_each), tiny_backbone_dirs["v_prediction"], "h",
                   baseline=True)
    metrics = result["metrics"]
    assert metrics["validated"] is False
    assert metrics["miou"] is None
    assert "no class has two labels" in metrics["message"]
    assert result["baseline"]["validated"] is False
    assert result["most_uncertain"]["crs"] == "EPSG:32618"
    assert len(result["most_uncertain"]["bounds_wgs84"]) == 4


def test_a_single_class_is_refused(tmp_path: Path, tiny_backbone_dirs: dict[str, Path]) -> None:
    labels = write_labels(tmp_path / "l.gpkg", [item for item in LABELS if item[0] == "marsh"])
    with pytest.raises(UserError, match="at least two classes; the labels layer has only 'marsh'"):
        train(tmp_path, labels, tiny_backbone_dirs["v_prediction"], "h")


def test_a_head_for_another_backbone_is_refused_naming_both(tmp_path: Path, tiny_backbone_dirs: dict[str, Path],
                                                            tiny_backbone: Any) -> None:
    from backend.models.diffusion import load_backbone
    from backend.models.segmenter import SatDiFuser

    train(tmp_path, write_labels(tmp_path / "l.gpkg", LABELS), tiny_backbone_dirs["v_prediction"], "h")
    assert SatDiFuser.from_pretrained(tmp_path / "h", backbone=tiny_backbone).extractor is not None
    other = load_backbone(tiny_backbone_dirs["diffusionsat"])  # other weights, so another sha256
    with pytest.raises(UserError, match=r"trained on the backbone 'tiny-v' .*loaded backbone is 'tiny-diffusionsat'"):
        SatDiFuser.from_pretrained(tmp_path / "h", backbone=other)


def test_the_preview_maps_the_labels_surroundings_with_uncertainty(tmp_path: Path,
                                                                   tiny_backbone_dirs: dict[str, Path]) -> None:
    import rasterio

    result = train(tmp_path, write_labels(tmp_path / "l.gpkg", LABELS), tiny_backbone_dirs["v_prediction"], "h",
                   preview=True)
    preview = result["preview"]
    assert Path(preview["class_raster"]).parent == tmp_path / "h" / "preview"
    assert {layer["name"] for layer in preview["layers"]} >= {"Classes", "Uncertainty"}
    region = result["most_uncertain"]
    assert region["source"] == "preview uncertainty"
    with rasterio.open(preview["uncertainty_raster"]) as src:
        left, bottom, right, top = src.bounds
    assert left <= region["bounds"][0] < region["bounds"][2] <= right
    assert bottom <= region["bounds"][1] < region["bounds"][3] <= top
    west, south, east, north = region["bounds_wgs84"]
    # The sample scene, on the US east coast.
    assert -76 < west < east < -75
    assert 37 < south < north < 38


def test_the_most_uncertain_window_is_found(tmp_path: Path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from backend.jobs.train_preview import most_uncertain_in_raster

    scores = np.full((200, 300), 0.1, dtype=np.float32)
    scores[120:170, 200:250] = 0.9  # the region a new label would help most
    scores[:, :20] = -1.0  # outside the area (nodata)
    path = tmp_path / "uncertainty.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=1, dtype="float32", nodata=-1.0,
                       crs="EPSG:32618", transform=from_origin(1000.0, 5000.0, 10.0, 10.0)) as dst:
        dst.write(scores, 1)
    region = most_uncertain_in_raster(path, 50)
    assert region["bounds"] == [1000.0 + 200 * 10, 5000.0 - 175 * 10, 1000.0 + 250 * 10, 5000.0 - 125 * 10]
    assert region["crs"] == "EPSG:32618"
    assert region["mean_uncertainty"] > 0.7
