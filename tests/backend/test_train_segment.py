"""The ``train`` and ``segment`` jobs end to end on the sample scene with a tiny random backbone.

Labels are drawn over the sample's north-east: two water and three marsh polygons (so each has one
held out for validation) and one field polygon (trained on, never validated). Tiles are 128 px and
features come from two timesteps, which keeps the whole module at a few seconds per job on a CPU.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from backend.errors import JobCancelled, UserError
from backend.progress import Progress
from backend.raster.tiles import blend_weights, tile_windows
from backend.worker import run_job
from tests.backend.rasters import write_area, write_raster
from tests.conftest import BACKEND_PYTHON, ROOT, SAMPLE_SCENE

#: Upper-left corner of the sample scene (UTM 18N) and its pixel size.
X0_M, Y0_M, PIXEL_M = 443330.0, 4173860.0, 10.0
FAST = {"tile_px": 128, "timesteps": "1,100", "epochs": 15}


def pixel_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Geometry:
    return shapely.box(X0_M + col0 * PIXEL_M, Y0_M - row1 * PIXEL_M, X0_M + col1 * PIXEL_M, Y0_M - row0 * PIXEL_M)


LABELS = [
    ("water", pixel_box(330, 10, 380, 50)), ("water", pixel_box(420, 20, 470, 60)),
    ("marsh", pixel_box(256, 192, 316, 250)), ("marsh", pixel_box(396, 92, 418, 122)),
    ("marsh", pixel_box(322, 152, 354, 188)), ("field", pixel_box(258, 44, 280, 88)),
]


def write_labels(path: Path, labels: list[tuple[str, shapely.Geometry]], crs: str = "EPSG:32618",
                 extra: dict[str, list[Any]] | None = None) -> Path:
    names = np.array([name for name, _ in labels], dtype=object)
    fields, data = ["class_name"], [names]
    for key, values in (extra or {}).items():
        fields.append(key)
        data.append(np.asarray(values))
    geometry = np.array(shapely.to_wkb([g for _, g in labels]), dtype=object)
    pyogrio.raw.write(str(path), geometry, field_data=data, fields=fields, crs=crs, geometry_type="Polygon",
                      driver="GPKG")
    return path


@pytest.fixture(scope="module")
def backbone_dir(tiny_backbone_dirs: dict[str, Path]) -> Path:
    return tiny_backbone_dirs["v_prediction"]


@pytest.fixture(scope="module")
def trained(backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One training run shared by the module: its head folder, result and progress messages."""
    folder = tmp_path_factory.mktemp("train")
    messages: list[tuple[int, int, str]] = []
    labels = write_labels(folder / "labels.gpkg", LABELS, extra={"colour": ["#0000ff"] * 2 + [""] * 4})
    result = run_job("train", {"image": str(SAMPLE_SCENE), "labels": str(labels), "backbone": str(backbone_dir),
                               "out": str(folder / "head"), "fusion": "global", "cache_dir": str(folder / "cache"),
                               "preview": False, **FAST},
                     Progress(lambda d, t, m: messages.append((d, t, m)), min_interval_s=0))
    return {"head": folder / "head", "result": result, "messages": messages}


def test_train_saves_the_head_with_its_metrics(trained: dict[str, Any], backbone_dir: Path) -> None:
    head = trained["head"]
    assert sorted(p.name for p in head.iterdir()) == ["config.json", "head.safetensors"]
    config = json.loads((head / "config.json").read_text())
    assert [(c["id"], c["name"]) for c in config["classes"]] == [(1, "field"), (2, "marsh"), (3, "water")]
    assert config["classes"][2]["colour"] == "#0000ff"  # from the layer's colour field
    assert config["backbone"]["source"] == str(backbone_dir.resolve())
    assert len(config["backbone"]["sha256"]) == 64
    assert config["bands"] == [3, 2, 1]  # the sample's red, green and blue bands
    assert all(low < high for low, high in zip(config["band_low"], config["band_high"]))
    assert config["timesteps"] == [1, 100]
    assert config["tile_px"] == 128
    assert config["created"]
    metrics = trained["result"]["metrics"]
    assert config["metrics"] == {**metrics, "baseline": trained["result"]["baseline"],
                                 "comparison": trained["result"]["comparison"]}
    assert metrics["validated"] is True
    # Two water and three marsh polygons in separate 1 km blocks, too few for folds: one split holds out one
    # water and one marsh polygon, and says so.
    assert metrics["scheme"] == "single split"
    assert metrics["held_out_labels"] == 2
    assert "rests on 2 held-out labels" in metrics["summary"]
    assert sorted(trained["result"]["validation"]["fold_of_label"].values(), key=str) == [0, 0, None, None, None,
                                                                                        None]
    per_class = {c["class_name"]: c for c in metrics["per_class"]}
    assert per_class["field"]["support_px"] == 0  # a single polygon is never held out
    assert per_class["field"]["f1"] is None
    assert not per_class["field"]["validated"]
    assert "'field'" in metrics["message"]
    assert per_class["water"]["support_px"] > 0
    assert per_class["marsh"]["support_px"] > 0
    assert 0.0 <= metrics["miou"] <= 1.0
    assert metrics["confusion_matrix"]["classes"] == ["field", "marsh", "water"]
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == metrics["pixels"]
    for name in ("precision", "recall", "f1", "iou"):
        assert name in per_class["water"]
    # The saved head trained on every label for the epochs the fold's inner folds chose, and says how well it
    # fits them.
    assert len(trained["result"]["losses"]) == trained["result"]["validation"]["final_epochs"]
    assert 0.0 <= metrics["training"]["overall_accuracy"] <= 1.0


def test_train_reports_features_then_epochs(trained: dict[str, Any]) -> None:
    messages = [m for _, _, m in trained["messages"]]
    assert any(m.startswith("backbone features, tile 1 of") for m in messages)
    assert any(m.startswith("training (fold 1 of 1, inner fold 1 of ") for m in messages)
    final_epochs = trained["result"]["validation"]["final_epochs"]  # as many as the fold's inner folds chose
    assert len(trained["result"]["losses"]) == final_epochs
    final = [m for m in messages if m.startswith("training (every label): epoch")]
    assert len(final) == final_epochs
    assert all(m.startswith(f"training (every label): epoch {e + 1},") for e, m in enumerate(final))
    done, total, _ = trained["messages"][-1]
    assert done == total


@pytest.fixture(scope="module")
def segmented(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("segment")
    # A triangle: the output covers its bounding box, and only the triangle is classified.
    aoi = write_area(folder / "aoi.gpkg", [shapely.Polygon([
        (X0_M + 250 * PIXEL_M, Y0_M), (X0_M + 480 * PIXEL_M, Y0_M), (X0_M + 250 * PIXEL_M, Y0_M - 200 * PIXEL_M),
    ])], "EPSG:32618")
    result = run_job("segment", {"image": str(SAMPLE_SCENE), "model": str(trained["head"]), "aoi": str(aoi),
                                 "out": str(folder / "out")}, Progress())
    return {"out": folder / "out", "result": result}


def test_segment_writes_a_class_raster_limited_to_the_area(segmented: dict[str, Any]) -> None:
    out = segmented["out"]
    assert sorted(p.name for p in out.iterdir()) == [  # no partial files
        "classes.gpkg", "classes.qml", "classes.tif", "classes.tif.aux.xml", "classes_polygons.qml", "confidence.qml",
        "confidence.tif"]
    with rasterio.open(out / "classes.tif") as dst, rasterio.open(SAMPLE_SCENE) as src:
        assert dst.dtypes == ("uint8",)
        assert dst.nodata == 255
        assert dst.crs == src.crs
        assert (dst.width, dst.height) == (230, 200)
        assert dst.transform.c == X0_M + 250 * PIXEL_M
        assert dst.transform.f == Y0_M
        classes = dst.read(1)
        assert dst.colormap(1)[3] == (0, 0, 255, 255)
        assert dst.tags()["CLASS_2"] == "marsh"
        provenance = json.loads(dst.tags()["TERRAFUSE_PROVENANCE"])
    assert len(provenance["backbone_sha256"]) == 64
    assert set(np.unique(classes)) <= {1, 2, 3, 255}
    assert classes[5, 5] != 255  # inside the triangle
    assert classes[190, 220] == 255  # outside it, inside its bounding box
    inside = classes != 255
    assert 0.4 < inside.mean() < 0.6  # about half of the box
    assert sum(segmented["result"]["class_px"].values()) == inside.sum()


def test_segment_writes_class_polygons(segmented: dict[str, Any]) -> None:
    path = segmented["out"] / "classes.gpkg"
    info = pyogrio.read_info(str(path))
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2", "mean_confidence"]
    assert info["crs"] == "EPSG:32618"
    _, _, _, (ids, names, areas, confidences) = pyogrio.raw.read(str(path))
    assert ((confidences > 0) & (confidences <= 1)).all()
    assert set(ids) <= {1, 2, 3}
    assert {(i, n) for i, n in zip(ids, names)} <= {(1, "field"), (2, "marsh"), (3, "water")}
    classified_px = sum(segmented["result"]["class_px"].values())
    assert areas.sum() == pytest.approx(classified_px * PIXEL_M**2)


def test_segment_refuses_a_head_for_another_backbone(trained: dict[str, Any], tiny_backbone_dirs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    other = tiny_backbone_dirs["diffusionsat"]
    with pytest.raises(UserError, match=r"trained on the backbone .*but the loaded backbone is 'tiny-diffusionsat'"):
        run_job("segment", {"image": str(SAMPLE_SCENE), "model": str(trained["head"]), "backbone": str(other),
                            "out": str(tmp_path / "out")}, Progress())
    assert not (tmp_path / "out").exists()


def test_cancelled_segment_leaves_no_output(trained: dict[str, Any], tmp_path: Path) -> None:
    def cancel_at_second_tile(done: int, total: int, message: str) -> None:
        if message.startswith("tile 2"):
            progress.cancel()  # as the worker does when the plugin's cancel message arrives

    progress = Progress(cancel_at_second_tile, min_interval_s=0)
    with pytest.raises(JobCancelled):
        run_job("segment", {"image": str(SAMPLE_SCENE), "model": str(trained["head"]), "out": str(tmp_path / "out"),
                            "aoi": str(write_area(tmp_path / "aoi.gpkg", [pixel_box(0, 0, 200, 200)], "EPSG:32618"))},
                progress)
    assert not (tmp_path / "out" / "classes.tif").exists()


class PixelwiseModel(torch.nn.Module):
    """Stands in for a SatDiFuser whose logits depend on each pixel alone: class k scores
    -(mean band value - centre_k)^2. Tiling, blending and placement must then reproduce the map
    computed on the whole area at once."""

    centres = torch.tensor([-0.5, 0.0, 0.5])

    def forward(self, images: torch.Tensor, bands: torch.Tensor | None = None) -> torch.Tensor:
        # ``bands``: what segment sends a head trained with the band context (the default); not read here.
        return -(images.mean(1, keepdim=True) - self.centres[None, :, None, None]) ** 2


def test_tiles_are_blended_back_in_place(trained: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.inference import tile_model
    from backend.models.segmenter import read_config
    from backend.raster.bands import BandNormalisation, read_bands

    monkeypatch.setattr(tile_model, "load_segmenter",
                        lambda model_dir, backbone, device, settings=None:
                        (PixelwiseModel(), {"backbone": "stand-in"}, "0" * 64))
    area = Window(37, 61, 301, 205)  # not aligned with the tiles, which overlap by 32 px
    aoi = write_area(tmp_path / "aoi.gpkg", [pixel_box(37, 61, 37 + 301, 61 + 205)], "EPSG:32618")
    result = run_job("segment", {"image": str(SAMPLE_SCENE), "model": str(trained["head"]), "aoi": str(aoi),
                                 "out": str(tmp_path / "out")}, Progress())
    assert result["tiles"] == 6  # 3 x 2 tiles of 128 px, 96 px apart
    config = read_config(trained["head"])
    with rasterio.open(SAMPLE_SCENE) as src:
        raw, _ = read_bands(src, area, config.bands)
    image = BandNormalisation(tuple(config.bands), tuple(config.band_low), tuple(config.band_high)).apply(raw)
    expected = np.array([c["id"] for c in config.classes])[
        PixelwiseModel()(torch.from_numpy(image)[None]).argmax(1)[0].numpy()]
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert (dst.width, dst.height) == (301, 205)
        assert (dst.read(1) == expected).mean() > 0.999  # argmax ties in float sums may flip a pixel


def test_nodata_pixels_stay_nodata(trained: dict[str, Any], tmp_path: Path) -> None:
    with rasterio.open(SAMPLE_SCENE) as src:
        data = src.read(window=Window(256, 0, 160, 128))
    data[:, 20:40, 30:90] = 0
    image = write_raster(tmp_path / "holes.tif", data, transform=from_origin(X0_M + 256 * PIXEL_M, Y0_M, 10, 10),
                         nodata=0)
    result = run_job("segment", {"image": str(image), "model": str(trained["head"]), "out": str(tmp_path / "out")},
                     Progress())
    assert result["nodata_px"] == 20 * 60
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        classes = dst.read(1)
    assert (classes[20:40, 30:90] == 255).all()
    assert (classes[:20] != 255).all()


def _train_params(tmp_path: Path, labels: Path, backbone: Path) -> dict[str, Any]:
    return {"image": str(SAMPLE_SCENE), "labels": str(labels), "backbone": str(backbone),
            "out": str(tmp_path / "head"), "cache_dir": str(tmp_path / "cache"), "preview": False, **FAST}


def test_labels_of_one_class_are_refused(tmp_path: Path, backbone_dir: Path) -> None:
    labels = write_labels(tmp_path / "labels.gpkg", [item for item in LABELS if item[0] == "water"])
    with pytest.raises(UserError, match="at least two classes.*only 'water'"):
        run_job("train", _train_params(tmp_path, labels, backbone_dir), Progress())
    assert not (tmp_path / "head").exists()


def test_labels_outside_the_raster_are_refused(tmp_path: Path, backbone_dir: Path) -> None:
    far = [(name, shapely.affinity.translate(g, xoff=50_000)) for name, g in LABELS]
    labels = write_labels(tmp_path / "labels.gpkg", far)
    with pytest.raises(UserError, match="labels lie outside the raster"):
        run_job("train", _train_params(tmp_path, labels, backbone_dir), Progress())


def test_a_class_whose_labels_are_only_outside_is_named(tmp_path: Path, backbone_dir: Path) -> None:
    labels = write_labels(tmp_path / "labels.gpkg",
                          LABELS + [("sand", shapely.affinity.translate(pixel_box(0, 0, 9, 9), xoff=-50_000))])
    with pytest.raises(UserError, match=r"Too few labelled pixels to train: 'sand' \(0 px\)"):
        run_job("train", _train_params(tmp_path, labels, backbone_dir), Progress())


def test_labels_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    """Labels in WGS84 land on the same pixels as in UTM (checked on the rasterised label features)."""
    from backend.raster.labels import labels_on_raster, rasterize_features, read_labels

    from_utm = write_labels(tmp_path / "utm.gpkg", LABELS)
    wgs84 = [(name, shapely.geometry.shape(rasterio.warp.transform_geom("EPSG:32618", "EPSG:4326",
                                                                         shapely.geometry.mapping(g))))
             for name, g in LABELS]
    from_wgs84 = write_labels(tmp_path / "wgs84.gpkg", wgs84, crs="EPSG:4326")
    with rasterio.open(SAMPLE_SCENE) as src:
        utm_labels, utm_window, _ = labels_on_raster(read_labels(str(from_utm)), src)
        wgs_labels, wgs_window, _ = labels_on_raster(read_labels(str(from_wgs84)), src)
        assert utm_window == Window(256, 10, 214, 240)
        a = rasterize_features(utm_labels, utm_window, src.transform)
        b = rasterize_features(wgs_labels, utm_window, src.transform)
    assert (a == b).mean() > 0.99


def test_class_ids_and_colours_come_from_the_layer(tmp_path: Path) -> None:
    from backend.raster.labels import read_labels

    labels = read_labels(str(write_labels(tmp_path / "ids.gpkg", LABELS, extra={
        "class_id": [7, 7, 3, 3, 3, 12], "colour": ["#00ff00", "", "", "#123456", "", "bad"]})))
    assert [(c.id, c.name, c.colour) for c in labels.classes] == [
        (3, "marsh", "#123456"), (7, "water", "#00ff00"), (12, "field", "#e31a1c")]
    assert labels.class_index.tolist() == [1, 1, 0, 0, 0, 2]
    with pytest.raises(UserError, match="The class 'water' has two ids in .*: 7 and 8"):
        read_labels(str(write_labels(tmp_path / "clash.gpkg", LABELS, extra={"class_id": [7, 8, 3, 3, 3, 12]})))
    with pytest.raises(UserError, match="ids must lie in 0..254"):
        read_labels(str(write_labels(tmp_path / "big.gpkg", LABELS, extra={"class_id": [7, 7, 3, 3, 3, 255]})))
    geometry = np.array(shapely.to_wkb([g for _, g in LABELS]), dtype=object)
    pyogrio.raw.write(str(tmp_path / "plain.gpkg"), geometry, field_data=[np.array(["a"] * 6, dtype=object)],
                      fields=["name"], crs="EPSG:32618", geometry_type="Polygon", driver="GPKG")
    with pytest.raises(UserError, match="no 'class_name' field; it has: name"):
        read_labels(str(tmp_path / "plain.gpkg"))


def test_tiles_cover_the_area_inside_the_raster() -> None:
    tiles = tile_windows(Window(500, 10, 140, 100), 128, 32, (640, 640))
    assert {(t.width, t.height) for t in tiles} == {(128, 128)}
    assert all(t.col_off >= 0 and t.col_off + t.width <= 640 for t in tiles)  # shifted in, never padded
    covered = np.zeros((640, 640), dtype=bool)
    for t in tiles:
        covered[t.row_off:t.row_off + t.height, t.col_off:t.col_off + t.width] = True
    assert covered[10:110, 500:640].all()
    assert tile_windows(Window(0, 0, 50, 40), 128, 32, (40, 50)) == [Window(0, 0, 50, 40)]


def test_blend_weights_fall_towards_tile_edges() -> None:
    weights = blend_weights((64, 64), 16)
    assert weights.min() > 0
    assert weights[32, 32] == 1.0
    assert weights[0, 32] < weights[8, 32] < weights[16, 32]


def test_command_line_error_is_one_line(tmp_path: Path, backbone_dir: Path) -> None:
    labels = write_labels(tmp_path / "labels.gpkg", [item for item in LABELS if item[0] == "marsh"])
    done = subprocess.run([BACKEND_PYTHON, "-m", "backend", "--quiet", "train", "--image", str(SAMPLE_SCENE),
                           "--labels", str(labels), "--backbone", str(backbone_dir), "--out", str(tmp_path / "h")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Training needs labels of at least two classes; the labels layer has only 'marsh'. "
        "Draw labels of another class"]


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["localized", "moe"])
def test_command_line_trains_and_segments_the_whole_scene(fusion: str, tmp_path: Path, backbone_dir: Path) -> None:
    labels = write_labels(tmp_path / "labels.gpkg", LABELS)

    def backend(*args: str) -> dict[str, Any]:
        done = subprocess.run([BACKEND_PYTHON, "-m", "backend", "--quiet", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    trained = backend("train", "--image", str(SAMPLE_SCENE), "--labels", str(labels), "--backbone",
                      str(backbone_dir), "--out", str(tmp_path / "head"), "--fusion", fusion, "--tile-px", "128",
                      "--epochs", "10", "--bands", "3,2,1")
    assert trained["metrics"]["miou"] is not None
    result = backend("segment", "--image", str(SAMPLE_SCENE), "--model", str(tmp_path / "head"), "--out",
                     str(tmp_path / "out"))
    assert (result["width"], result["height"]) == (640, 640)
    assert result["nodata_px"] == 0
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert dst.read(1).max() <= 3
