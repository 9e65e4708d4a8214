"""Flows 1 and 2 in the dock: label classes, train a head, map the land cover, get styled layers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QPoint, Qt

from tests.conftest import BACKEND_PYTHON, ROOT
from tests.plugin.conftest import show_layer

JOB_TIMEOUT_MS = 600_000
UTM18 = QgsCoordinateReferenceSystem("EPSG:32618")
# Two squares per class over the sample scene: ocean, salt marsh, fields.
LABELS = {
    "water": [(448700, 4169000), (448900, 4171500)],
    "marsh": [(445200, 4169000), (445800, 4170200)],
    "fields": [(443700, 4173000), (444300, 4172600)],
}


@pytest.fixture(scope="session")
def tiny_backbone_folder(tmp_path_factory) -> Path:
    """A tiny random SD-2-architecture backbone, built by the backend's environment (QGIS's has no torch)."""
    folder = tmp_path_factory.mktemp("backbone") / "tiny"
    script = ("import sys; from pathlib import Path; from tests.backend.conftest import write_tiny_backbone; "
              "write_tiny_backbone(Path(sys.argv[1]))")
    subprocess.run([BACKEND_PYTHON, "-c", script, str(folder)], cwd=ROOT, check=True, timeout=300)
    return folder


def run_and_wait(dock, qtbot):
    with qtbot.waitSignal(dock.jobDone, timeout=JOB_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    return blocker.args


def test_label_train_and_map(plugin, iface, sample_layer, qtbot, tmp_path, tiny_backbone_folder) -> None:
    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    panel = dock.labels_panel
    labels = panel.create_labels(str(tmp_path / "labels.gpkg"))
    for name, corners in LABELS.items():
        label_class = panel.add_class(name)
        for x, y in corners:
            labels.add_label(QgsGeometry.fromRect(QgsRectangle(x, y, x + 300, y + 300)), UTM18, label_class.class_id)
    panel.refresh_classes()

    dock.set_task("train")
    dock.options_form.set_value("backbone", str(tiny_backbone_folder))
    dock.options_form.set_value("epochs", 5)
    dock.options_form.set_value("out", str(tmp_path / "head"))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("train", "ok"), outcome
    assert "Overall accuracy" in dock.resultBrowser.toPlainText() or "Not validated" in dock.resultBrowser.toPlainText()
    assert dock.last_head == str(tmp_path / "head")

    dock.set_task("segment")
    assert dock.options_form.values()["model"] == str(tmp_path / "head"), "the new head is offered"
    dock.set_area_mode("rectangle")
    viewport = iface.canvas.viewport()
    width, height = viewport.width(), viewport.height()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=QPoint(int(width * 0.3), int(height * 0.3)))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=QPoint(int(width * 0.7), int(height * 0.7)))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("segment", "ok"), outcome
    root = QgsProject.instance().layerTreeRoot()
    group = next(node for node in root.children() if root.isGroup(node))  # the newest, under the labels
    assert group.name().startswith("Land cover · head · ")
    layers = {node.layer().name(): node.layer() for node in group.findLayers()}
    classes = next(layer for layer in layers.values() if layer.type() == layer.RasterLayer)
    assert classes.renderer().type() == "paletted"
    labels_in_legend = {c.label for c in classes.renderer().classes()}
    assert {"water", "marsh", "fields"} <= labels_in_legend
    assert classes.extent().width() < sample_layer.extent().width(), "only the drawn area"
    assert "checkpoint_sha256" in classes.metadata().abstract()
