"""Flow 4 in the dock: a geo-prototype map of an area as a paletted overlay."""

from __future__ import annotations

from qgis.core import QgsProject
from qgis.PyQt.QtCore import Qt

from tests.conftest import SAMPLE_SCENE
from tests.plugin.conftest import show_layer


def test_prototype_map_of_the_sample(plugin, iface, sample_layer, qtbot, tmp_path) -> None:
    dock = plugin.dock
    show_layer(iface, sample_layer)
    dock.set_task("prototypes")
    dock.set_area_mode("canvas")
    form = dock.options_form
    form.set_value("model", "skysense-tiny")  # random weights, with an encoder for a high-resolution image
    with qtbot.waitSignal(dock.jobDone, timeout=300_000, check_params_cb=lambda job, _outcome: job == "series"):
        dock.series_table.add_paths([str(SAMPLE_SCENE)], "hr")  # the inputs come from the date table
    form.set_value("grid_gsd_m", 80.0)
    form.set_value("out", str(tmp_path / "prototypes"))
    with qtbot.waitSignal(dock.jobDone, timeout=300_000) as done:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    job, outcome = done.args
    assert (job, outcome["status"]) == ("prototypes", "ok"), outcome
    group = QgsProject.instance().layerTreeRoot().children()[0]
    layers = [node.layer() for node in group.findLayers()]
    rasters = [layer for layer in layers if layer.type() == layer.RasterLayer]
    paletted = [layer for layer in rasters if layer.renderer().type() == "paletted"]
    assert paletted, [layer.name() for layer in layers]
    assert "random weights" in " ".join(outcome["result"]["warnings"])
