"""Map land cover with bad input, in the dock as a user would (issue 4, part 7): each case gets a clear
message in the dock, writes nothing under an output's name, and QGIS goes on (the next job works)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import Qt

from backend.output_folder import FolderLock
from tests.conftest import BACKEND_PYTHON, ROOT

JOB_TIMEOUT_MS = 120_000

#: Written by the backend's environment (QGIS's has no torch or rasterio): a tiny random backbone, a head on
#: it for bands 1,2,3 and the same head for bands 4,3,2, and the rasters of the cases.
FIXTURES = r"""
import json, shutil, sys
from pathlib import Path
import numpy as np, rasterio, torch
from rasterio.transform import from_origin
from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
from backend.models.segmenter import SatDiFuser
from tests.backend.conftest import write_tiny_backbone

root = Path(sys.argv[1])
backbone_dir = write_tiny_backbone(root / "backbone")
backbone = load_backbone(backbone_dir)
extractor = DiffusionFeatureExtractor(backbone, timesteps=(1,))
torch.manual_seed(0)
classes = [{"id": 1, "name": "water", "colour": "#1f78b4"}, {"id": 2, "name": "land", "colour": "#33a02c"}]
model = SatDiFuser.create(
    extractor.feature_info, classes, "global", "pixel", fusion_kwargs={"out_chs": 8},
    backbone={"name": backbone.name, "source": str(backbone_dir.resolve()), "sha256": backbone.sha256},
    timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
    bands=[1, 2, 3], band_low=[0.0] * 3, band_high=[255.0] * 3, tile_px=64)
model.save_pretrained(root / "head")
shutil.copytree(root / "head", root / "head432")
config = json.loads((root / "head432" / "config.json").read_text())
config["bands"] = [4, 3, 2]
(root / "head432" / "config.json").write_text(json.dumps(config))

def write(name, data, crs="EPSG:32618", nodata=None):
    count, height, width = data.shape
    with rasterio.open(root / name, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=data.dtype, crs=crs, transform=from_origin(443330.0, 4173860.0, 10.0, 10.0),
                       nodata=nodata, tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(data)

rng = np.random.default_rng(0)
write("rgb.tif", rng.integers(0, 255, (3, 80, 80), dtype=np.uint8))
write("reflectance.tif", (rng.integers(0, 255, (3, 80, 80)) / 10000).astype(np.float32))  # the head's data / 10000
(root / "mine").mkdir()
(root / "mine" / "notes.txt").write_text("the user's")
write("no_crs.tif", rng.integers(0, 255, (3, 80, 80), dtype=np.uint8), crs=None)
write("all_nodata.tif", np.zeros((3, 80, 80), np.uint8), nodata=0)
write("complex.tif", rng.normal(size=(3, 80, 80)).astype(np.complex64))
write("one_band.tif", rng.integers(0, 255, (1, 80, 80), dtype=np.uint8))
write("thirteen_bands.tif", rng.integers(0, 256, (13, 80, 80), dtype=np.uint16))  # 16-bit, the head's range
rows, cols = np.indices((240, 240))
fields = (rows // 97 % 3 * 80 + cols // 131 % 2 * 40)[None] + rng.integers(0, 20, (3, 240, 240))
write("large.tif", fields.astype(np.uint8))  # 25 tiles: seconds of work on a CPU
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    env = {**os.environ, "TERRAFUSE_CACHE_DIR": str(root / "cache")}
    subprocess.run([BACKEND_PYTHON, "-c", FIXTURES, str(root)], cwd=ROOT, check=True, timeout=300, env=env)
    return root


def add_raster(path: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def run_segment(dock, qtbot, layer: QgsRasterLayer, head: Path, out: Path, on_progress=None) -> dict[str, Any]:
    dock.rasterCombo.setLayer(layer)
    dock.set_task("segment")
    dock.options_form.set_value("model", str(head))
    dock.options_form.set_value("out", str(out))
    with qtbot.waitSignal(dock.jobDone, timeout=JOB_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
        if on_progress is not None:
            dock.task.progressMessage.connect(on_progress)
    job, outcome = blocker.args
    assert job == "segment"
    return outcome


def written(out: Path) -> list[str]:
    """Files under an output's name (temporary files are hidden, named with a leading dot)."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def outside_area() -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "elsewhere", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(10.0, 45.0, 10.1, 45.1)))
    layer.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(layer)
    return layer


def test_bad_input_and_a_cancel_leave_a_message_and_nothing_written(plugin, files: Path, qtbot, tmp_path: Path) -> None:
    dock = plugin.dock
    plugin.action.trigger()
    head, head432 = files / "head", files / "head432"
    rgb = add_raster(files / "rgb.tif")
    cases = [
        ("no_crs.tif", head, None, "The raster has no CRS"),
        ("rgb.tif", head, "outside", "The area lies outside the raster"),
        ("all_nodata.tif", head, None, "The area holds no valid pixel"),
        ("complex.tif", head, None, "The raster holds complex values"),
        ("one_band.tif", head, None, "this raster has 1 band (1..1): it is a model for other bands"),
        ("rgb.tif", head432, None, "trained on bands 4,3,2"),
        ("reflectance.tif", head, None, "data of another scale"),
        ("rgb.tif", head, files, "holds an input of this job"),
        ("rgb.tif", head, files / "mine", "holds files that are not this job's outputs (notes.txt)"),
        ("rgb.tif", head, "locked", "Another Terrafuse job"),
    ]
    before = sorted(str(p.relative_to(files)) for p in files.rglob("*") if "cache" not in p.parts)
    for name, model, area, message in cases:
        layer = rgb if name == "rgb.tif" else add_raster(files / name)
        if area == "outside":
            dock.set_area_mode("layer")
            dock.areaLayerCombo.setLayer(outside_area())
        else:
            dock.set_area_mode("whole")
        out = area if isinstance(area, Path) else tmp_path / (name.replace(".tif", "") + str(area))
        lock = None
        if area == "locked":  # another job writing into the folder chosen
            out.mkdir()
            lock = FolderLock.acquire(out, "segment")
        try:
            outcome = run_segment(dock, qtbot, layer, model, out)
        finally:
            if lock is not None:
                lock.release()
        assert outcome["status"] == "error", (name, outcome)
        assert outcome["user_error"], (name, outcome)
        assert message in dock.statusLabel.text(), (name, dock.statusLabel.text())
        assert "\n" not in outcome["message"]  # one line
        if not isinstance(area, Path) and area != "locked":
            assert not out.exists(), (name, list(out.iterdir()))
        assert dock.runButton.isEnabled()
    # The folders the user chose, with an input or their own files in them, are as they were.
    assert sorted(str(p.relative_to(files)) for p in files.rglob("*") if "cache" not in p.parts) == before

    # A cancel in the middle.
    dock.set_area_mode("whole")

    def cancel_at_the_first_tile(done: int, total: int, message: str, left_s: float) -> None:
        if message.startswith("tile") and dock.task is not None:
            qtbot.mouseClick(dock.cancelButton, Qt.MouseButton.LeftButton)

    outcome = run_segment(dock, qtbot, add_raster(files / "large.tif"), head, tmp_path / "cancelled",
                          cancel_at_the_first_tile)
    assert outcome["status"] == "cancelled", outcome
    assert dock.statusLabel.text() == "Cancelled"
    assert not (tmp_path / "cancelled").exists()

    # Odd band counts that fit: 13 bands of uint16 with the head for bands 4,3,2; then the plain case.
    outcome = run_segment(dock, qtbot, add_raster(files / "thirteen_bands.tif"), head432, tmp_path / "thirteen")
    assert outcome["status"] == "ok", outcome
    assert outcome["result"]["provenance"]["bands"] == [4, 3, 2]
    outcome = run_segment(dock, qtbot, rgb, head, tmp_path / "fine")
    assert outcome["status"] == "ok", outcome
    assert written(tmp_path / "fine") == ["classes.gpkg", "classes.qml", "classes.tif", "classes.tif.aux.xml",
                                          "classes_polygons.qml", "confidence.qml", "confidence.tif"]
    assert dock.statusLabel.text().startswith("Done in")


def test_a_dead_worker_is_reported_and_the_job_runs_again(plugin, files: Path, qtbot, tmp_path: Path) -> None:
    dock = plugin.dock
    large = add_raster(files / "large.tif")
    dock.set_area_mode("whole")
    killed: list[int] = []

    def kill_the_worker(done: int, total: int, message: str, left_s: float) -> None:
        if message.startswith("tile") and not killed:
            killed.append(dock.client.pid)
            os.kill(killed[0], signal.SIGKILL)

    out = tmp_path / "out"
    outcome = run_segment(dock, qtbot, large, files / "head", out, kill_the_worker)
    assert outcome["status"] == "error", outcome
    assert outcome["error_type"] == "WorkerDied"
    assert "restarted for the next job" in dock.statusLabel.text()
    # One clean line, the bar reset, the log behind "Details".
    status = dock.statusLabel
    assert status.textFormat() == Qt.TextFormat.RichText
    assert status.text().endswith("<a href='details'>Details</a>")
    assert "\n" not in status.text()
    assert "Traceback" not in status.text()
    assert dock.progressBar.value() == 0
    status.linkActivated.emit("details")  # what a click on the link sends
    details = dock.status.details_dialog
    assert details.isVisible()
    assert "WorkerDied" in details.text.toPlainText()
    assert "killed" in details.text.toPlainText()
    details.close()
    # Nothing under an output's name (the killed worker's hidden temporary files go with the next run; its
    # finished tiles wait in the job's resume store beside the cache).
    assert written(out) == []
    outcome = run_segment(dock, qtbot, large, files / "head", out)
    assert outcome["status"] == "ok", outcome
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert "classes.tif" in written(out)
