"""The dock an analyst would choose, driven as a user would: task-shaped forms that are never clipped, a result
page per task, progress that tells the truth, the preview under the labels."""

from __future__ import annotations

import shutil

from qgis.core import QgsApplication, QgsProcessingParameterDefinition, QgsProject
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QPoint, QRect, Qt
from qgis.PyQt.QtWidgets import QAbstractScrollArea, QCheckBox, QLineEdit, QWidget

from tests.conftest import SAMPLE_SCENE
from tests.plugin.conftest import show_layer
from tests.plugin.test_dock import run_and_wait

TASKS = ("segment", "train", "classify", "train-skysense", "prototypes", "inspect")


def open_dock(plugin, qtbot):
    dock = plugin.dock
    plugin.action.trigger()
    qtbot.waitUntil(dock.isVisible)
    qtbot.wait(50)
    return dock


def inside_a_scroll_area(widget: QWidget, top: QWidget) -> bool:
    parent = widget.parentWidget()
    while parent is not None and parent is not top:
        if isinstance(parent, QAbstractScrollArea):
            return True
        parent = parent.parentWidget()
    return False


def clipped(dock) -> list[str]:
    """The visible widgets of the dock that reach past its right edge (or are narrower than they need)."""
    viewport = dock._scroll.viewport()
    found = []
    for widget in dock.dockContents.findChildren(QWidget):
        if not widget.isVisible() or inside_a_scroll_area(widget, dock.dockContents):
            continue
        if isinstance(widget.parentWidget(), QLineEdit):  # a line edit's own clear button, drawn inside it
            continue
        rect = QRect(widget.mapTo(viewport, QPoint(0, 0)), widget.size())
        if rect.right() > viewport.width() or widget.width() < widget.minimumSizeHint().width():
            parent = widget.parentWidget()
            found.append(f"{type(widget).__name__} {widget.objectName()!r} in {type(parent).__name__} "
                         f"{parent.objectName()!r} right={rect.right()} "
                         f"width={widget.width()} min={widget.minimumSizeHint().width()} of {viewport.width()}")
    return found


def test_every_task_form_fits_the_dock_at_its_default_width(plugin, iface, sample_layer, qtbot, tmp_path) -> None:
    dock = open_dock(plugin, qtbot)
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    assert not clipped(dock), clipped(dock)  # the first open too, before any other task was chosen
    default_width = dock.width()
    for job in TASKS:
        dock.set_task(job)
        qtbot.wait(100)
        assert not clipped(dock), (job, clipped(dock))
        assert dock.width() == default_width, (job, "the dock keeps its width from task to task")
        assert dock._scroll.horizontalScrollBar().maximum() == 0 or not dock._scroll.horizontalScrollBar().isVisible()
        dock.grab().save(str(tmp_path / f"dock-{job}.png"))
    iface.window.resizeDocks([dock], [120], Qt.Orientation.Horizontal)  # as narrow as a user can drag it
    qtbot.wait(30)
    assert dock.width() >= dock.minimumSizeHint().width()
    assert not clipped(dock), clipped(dock)


def test_a_task_shaped_form_short_labels_and_advanced_folded(plugin, qtbot) -> None:
    dock = open_dock(plugin, qtbot)
    dock.set_task("train")
    qtbot.wait(30)  # the new form is shown with the next events
    form = dock.options_form
    layout_labels = set(form.labels.values())
    assert {"Backbone", "Fusion", "Output folder", "Feature cache (MB)"} <= layout_labels
    assert not {"Cache max mb", "Fusion chs", "Out", "Preview aoi"} & layout_labels, "no raw names"
    assert form.advanced.isCollapsed(), "the rest under a collapsed Advanced section"
    assert form.advanced.title().startswith("Advanced (")
    assert form.widgets["backbone"].isVisible()
    assert not form.widgets["cache_max_mb"].isVisible()
    assert isinstance(form.widgets["preview"], QCheckBox)
    assert form.widgets["preview"].text() == "Preview the area"
    out = form.widgets["out"]
    assert isinstance(out, QgsFileWidget)
    assert out.lineEdit().placeholderText() == "new: train-<time>", "a new, named folder in the profile"
    assert "Empty: a new folder in " in out.toolTip()
    assert out.toolTip().endswith("runs")
    assert "Size bound of the feature cache" in form.widgets["cache_max_mb"].toolTip()
    assert dock.taskHelpLabel.styleSheet() == "", "help in the normal text colour"
    visible = [name for name, widget in form.widgets.items() if widget.isVisible()]
    assert len(visible) <= 6, visible
    qtbot.mouseClick(form.advanced, Qt.MouseButton.LeftButton, pos=QPoint(20, 8))  # the title opens it
    qtbot.waitUntil(lambda: form.widgets["cache_max_mb"].isVisible())


def test_processing_uses_the_same_labels(plugin) -> None:
    train = QgsApplication.processingRegistry().algorithmById("terrafuse:train")
    out = train.parameterDefinition("OUT")
    assert out.description() == "Output folder"
    assert out.help() == "Folder the head is saved into"
    cache = train.parameterDefinition("CACHE_MAX_MB")
    assert cache.description() == "Feature cache (MB)"
    assert cache.flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced
    assert not train.parameterDefinition("LABELS").flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced


def test_one_result_page_per_task_cleared_when_a_job_starts(plugin, iface, sample_layer, qtbot) -> None:
    dock = open_dock(plugin, qtbot)
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    dock.set_area_mode("whole")
    dock.set_task("inspect")
    states = []
    with qtbot.waitSignal(dock.jobDone, timeout=120_000) as done:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
        dock.task.progressChanged.connect(
            lambda state: states.append((dock.statusLabel.text(), dock.progressBar.value())))
    assert done.args[1]["status"] == "ok"
    assert "B02 blue" in dock.resultBrowser.toPlainText()
    assert states
    assert all(("CPU: " in text or "GPU: " in text) for text, _ in states), \
        "the device from the job's first event, without Check backend"
    bar = [value for _, value in states]
    assert bar == sorted(bar), "the bar never goes backwards"

    dock.set_task("segment")
    assert dock.resultBrowser.toPlainText() == "", "another task: its own (empty) page"
    assert not dock.zoomUncertainButton.isVisible()
    dock.set_task("inspect")
    assert "B02 blue" in dock.resultBrowser.toPlainText(), "each task keeps its page"
    with qtbot.waitSignal(dock.jobDone, timeout=120_000):
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
        assert dock.resultBrowser.toPlainText() == "", "a new job of the task clears its page"
    assert "B02 blue" in dock.resultBrowser.toPlainText()
    job, outcome = run_and_wait(dock, qtbot, dock.checkBackendButton)
    assert "B02 blue" in dock.resultBrowser.toPlainText(), "Check backend leaves the task's page alone"


def test_the_preview_sits_under_the_labels_and_zoom_shows_uncertainty(plugin, iface, sample_layer, qtbot,
                                                                      tmp_path) -> None:
    dock = open_dock(plugin, qtbot)
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    labels = dock.labels_panel.create_labels(str(tmp_path / "labels.gpkg"))
    preview = tmp_path / "preview"
    preview.mkdir()
    shutil.copy(SAMPLE_SCENE, preview / "classes.tif")
    shutil.copy(SAMPLE_SCENE, preview / "uncertainty.tif")
    extent = sample_layer.extent()
    result = {  # a training's result as the backend returns it, on files QGIS can open
        "model": str(tmp_path / "head"), "metrics": {"validated": False, "message": "Too few labels"},
        "preview": {"provenance": {"model": "head"}, "layers": [
            {"path": str(preview / "classes.tif"), "kind": "raster", "name": "Classes", "visible": True},
            {"path": str(preview / "uncertainty.tif"), "kind": "raster", "name": "Uncertainty", "visible": False}]},
        "most_uncertain": {"bounds_wgs84": [-75.64, 37.67, -75.635, 37.675]},
    }
    dock.set_task("train")
    dock.show_result("train", result)
    root = QgsProject.instance().layerTreeRoot()
    names = [node.name() for node in root.children()]
    labels_at = names.index(labels.layer.name())
    group = root.children()[labels_at + 1]
    assert group.name().startswith("Preview · head · "), names
    classes = next(node.layer() for node in group.findLayers() if node.layer().name() == "Classes")
    assert 0 < classes.renderer().opacity() < 1, "semi-transparent"
    uncertainty = next(node for node in group.findLayers() if node.layer().name() == "Uncertainty")
    assert not uncertainty.isVisible()
    assert dock.zoomUncertainButton.isVisible()
    qtbot.mouseClick(dock.zoomUncertainButton, Qt.MouseButton.LeftButton)
    assert uncertainty.isVisible(), "zooming to the uncertain tile shows the uncertainty layer"
    assert iface.canvas.extent().width() < extent.width()
    dock.set_task("classify")
    assert not dock.zoomUncertainButton.isVisible(), "only on the training's page"


def test_metrics_with_their_spread_and_the_baseline_read_at_the_default_width(plugin, qtbot, tmp_path) -> None:
    from terrafuse_under_test.plugin.dock.results import metrics_html

    metrics = {
        "validated": True, "scheme": "cross-validation", "folds": 4, "held_out_labels": 23,
        "overall_accuracy": 0.83, "overall_accuracy_std": 0.04, "miou": 0.61, "miou_std": 0.07, "macro_f1": 0.72,
        "macro_f1_std": 0.06, "summary": "Cross-validated over 4 folds of 23 labels: mIoU 0.61 ± 0.07",
        "per_class": [
            {"class_id": 1, "class_name": "water", "f1": 0.71, "f1_std": 0.08, "iou": 0.55, "iou_std": 0.10,
             "precision": 0.7, "recall": 0.72, "support_px": 1200, "held_out_labels": 8, "validated": True},
            {"class_id": 2, "class_name": "salt marsh", "f1": 0.64, "f1_std": 0.11, "iou": 0.47, "iou_std": 0.12,
             "precision": 0.6, "recall": 0.68, "support_px": 900, "held_out_labels": 7, "validated": True},
            {"class_id": 3, "class_name": "fields", "f1": 0.81, "f1_std": 0.05, "iou": 0.68, "iou_std": 0.07,
             "precision": 0.8, "recall": 0.82, "support_px": 1500, "held_out_labels": 8, "validated": True}],
        "confusion_matrix": {"classes": ["water", "salt marsh", "fields"],
                             "matrix": [[1000, 150, 50], [120, 700, 80], [40, 90, 1370]]}}
    result = {"model": str(tmp_path / "head"), "metrics": metrics,
              "baseline": {**metrics, "name": "random forest on band values", "miou": 0.48, "miou_std": 0.09},
              "comparison": {"line": "The head beats the random forest by 0.13 mIoU (± 0.05 over 4 folds)",
                             "miou_gain": 0.13, "miou_gain_std": 0.05}}
    text = metrics_html(result)
    assert "F1" in text
    assert "0.71 ± 0.08" in text
    assert "0.55 ± 0.10" in text
    assert "The head beats the random forest by 0.13 mIoU" in text
    assert "23 held-out labels" in text
    assert "Bands beside features" not in text
    assert "Bands beside features" in metrics_html({**result, "band_context": True})
    alone = metrics_html({**result, "band_context": True, "validation": {"final_epochs": 0}})
    assert "the saved head is the band branch alone" in alone
    assert "It trained 12 epochs" in metrics_html({**result, "band_context": True, "validation": {"final_epochs": 12}})
    old = metrics_html({"model": "h", "metrics": {"per_class": [{"class_name": "water", "f1": 0.7, "iou": 0.5,
                                                                 "support_px": 3}], "miou": 0.5}})
    assert "0.70" in old, "an older result still renders"
    assert "±" not in old
    dock = open_dock(plugin, qtbot)
    dock.set_task("train")
    dock.results.set_page("train", text)
    qtbot.wait(30)
    browser = dock.resultBrowser
    assert browser.horizontalScrollBar().maximum() == 0, "readable without scrolling sideways"
    dock.grab().save(str(tmp_path / "metrics.png"))


def test_the_task_help_is_one_clause() -> None:
    from terrafuse_under_test.plugin.dock.task_section import first_sentence

    assert first_sentence("Assigns cells to prototypes (SkySense Fig. 5); writes prototypes.tif.") == \
        "Assigns cells to prototypes (SkySense Fig. 5)."
    assert first_sentence("Trains a head: features are cached. Saves it.") == "Trains a head."
    assert first_sentence("CRS and size over the area.") == "CRS and size over the area."
