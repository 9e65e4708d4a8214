"""The dock driven as a user would: choose a raster, draw an area on the map, run, read the result."""

from __future__ import annotations

from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import QPoint, Qt

from tests.plugin.conftest import show_layer

JOB_TIMEOUT_MS = 120_000


def canvas_point(iface, fx: float, fy: float) -> QPoint:
    viewport = iface.canvas.viewport()
    return QPoint(int(viewport.width() * fx), int(viewport.height() * fy))


def run_and_wait(dock, qtbot, button=None):
    with qtbot.waitSignal(dock.jobDone, timeout=JOB_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(button or dock.runButton, Qt.MouseButton.LeftButton)
    return blocker.args


def test_inspect_a_drawn_polygon(plugin, iface, sample_layer, qtbot) -> None:
    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("inspect")
    dock.set_area_mode("polygon")
    assert dock.drawAreaButton.isChecked(), "choosing a drawn area starts drawing"
    viewport = iface.canvas.viewport()
    corners = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    for fx, fy in corners:
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=canvas_point(iface, fx, fy))
    qtbot.mouseClick(viewport, Qt.MouseButton.RightButton, pos=canvas_point(iface, 0.25, 0.75))
    assert "Drawn polygon" in dock.areaLabel.text()
    assert not dock.drawAreaButton.isChecked()
    drawn = dock.current_area().geometry
    assert len(drawn.asPolygon()[0]) == 5  # four clicks, closed

    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("inspect", "ok"), outcome
    result = outcome["result"]
    # The window covers the drawn polygon (10 m pixels, the canvas in the raster's CRS).
    expected_width_px = drawn.boundingBox().width() / 10.0
    assert 0 < expected_width_px < 640
    assert abs(result["area"]["window"]["width"] - expected_width_px) <= 2
    assert result["area"]["polygons"] == 1
    html = dock.resultBrowser.toPlainText()
    assert "B02 blue" in html
    assert "WGS 84 / UTM zone 18N" in html
    assert dock.progressBar.value() == 100
    assert dock.statusLabel.text().startswith("Done in")


def test_inspect_a_rectangle_drawn_by_dragging(plugin, iface, sample_layer, qtbot) -> None:
    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("inspect")
    dock.set_area_mode("rectangle")
    viewport = iface.canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=canvas_point(iface, 0.4, 0.4))
    qtbot.mouseMove(viewport, pos=canvas_point(iface, 0.5, 0.5))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=canvas_point(iface, 0.6, 0.6))
    assert "Drawn rectangle" in dock.areaLabel.text()
    job, outcome = run_and_wait(dock, qtbot)
    assert outcome["status"] == "ok", outcome
    window = outcome["result"]["area"]["window"]
    assert 0 < window["width"] < 640 / 2


def test_the_area_from_a_layer_in_another_crs(plugin, iface, sample_layer, qtbot) -> None:
    dock = plugin.dock
    show_layer(iface, sample_layer)
    fields = QgsVectorLayer("Polygon?crs=EPSG:4326", "fields", "memory")
    feature = QgsFeature()
    # Around 75.63 W, 37.68 N: inside the scene (UTM zone 18N).
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(-75.635, 37.675, -75.625, 37.685)))
    fields.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(fields)
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("inspect")
    dock.set_area_mode("layer")
    dock.areaLayerCombo.setLayer(fields)
    assert "fields (all features)" in dock.areaLabel.text()
    job, outcome = run_and_wait(dock, qtbot)
    assert outcome["status"] == "ok", outcome
    assert outcome["result"]["area"]["window"]["width"] > 50


def test_an_area_outside_the_raster_gets_a_clear_message(plugin, iface, sample_layer, qtbot) -> None:
    dock = plugin.dock
    elsewhere = QgsVectorLayer("Polygon?crs=EPSG:4326", "elsewhere", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(10.0, 45.0, 10.1, 45.1)))
    elsewhere.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(elsewhere)
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("inspect")
    dock.set_area_mode("layer")
    dock.areaLayerCombo.setLayer(elsewhere)
    job, outcome = run_and_wait(dock, qtbot)
    assert outcome["status"] == "error"
    assert outcome["user_error"]
    assert "The area lies outside the raster" in dock.statusLabel.text()
    assert dock.runButton.isEnabled()
    assert len(iface.message_bar.items()) == 1


def test_running_without_a_raster_says_so(plugin, qtbot) -> None:
    dock = plugin.dock
    dock.rasterCombo.setLayer(None)
    qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    assert dock.statusLabel.text() == "Choose a raster layer first"
    assert dock.task is None


def test_drawing_is_needed_before_running_a_drawn_area(plugin, sample_layer, qtbot) -> None:
    dock = plugin.dock
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("inspect")
    dock.set_area_mode("polygon")
    qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    assert "Draw the area on the map first" in dock.statusLabel.text()


def test_check_backend_shows_the_device_and_its_speed(plugin, qtbot) -> None:
    dock = plugin.dock
    job, outcome = run_and_wait(dock, qtbot, dock.checkBackendButton)
    assert (job, outcome["status"]) == ("selftest", "ok"), outcome
    assert dock.backendLabel.text().startswith(("CPU:", "GPU:"))
    assert "torch" in dock.backendLabel.text()
    assert "GFLOP/s" in dock.backendLabel.text()
    assert "resnet18 forward" in dock.backendBrowser.toPlainText(), "in the Backend section's own pane"
    assert dock.resultBrowser.toPlainText() == "", "never over a task's result"


def test_job_warnings_are_shown_above_the_result(plugin, iface, qtbot, tmp_path) -> None:
    """What classify and prototypes say about prototypes never learned reaches the dock and the message bar."""
    dock = plugin.dock
    plugin.action.trigger()
    warning = ("The prototypes of region 20 were never learned (no official file carries prototypes): the prototype "
               "map uses their initial, random values. Learn them on this area first: the prototypes task with "
               "'learn prototypes on the area'")
    dock.results.show_task("prototypes")
    dock.show_result("prototypes", {"outputs": {}, "regions": [20], "warnings": [warning]})
    text = dock.resultBrowser.toPlainText()
    assert text.index("never learned") < text.index("Prototype map")
    dock.results.show_task("classify")
    dock.show_result("classify", {"outputs": {}, "warnings": [warning]})
    assert "never learned" in dock.resultBrowser.toPlainText()
    bar = iface.messageBar()
    assert any("never learned" in item.text() for item in bar.items())
    dock.grab().save(str(tmp_path / "dock-warnings.png"))
