"""The Terrafuse dock: choose a raster, an area and a task, run it in the worker, see the result.

The layout lives in ui/dock.ui; this module holds the behaviour only.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any, Dict, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsWkbTypes,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QDockWidget, QFrame, QLineEdit, QMessageBox, QScrollArea

from ..backend import jobs
from .area import AreaError, AreaSelection, area_from_layer
from .cluster_placement import ClusterPlacementRow
from .dates_table import SERIES_PARAMS, InputsError, SeriesTable
from .diagnostics_dialog import DiagnosticsDialog, DiagnosticsTask
from .export import ExportError, export_raster, is_file_raster
from .job_form import JobOptionsForm
from .labels_panel import LabelsPanel
from .layers import LayerError, add_result_layers
from .map_tools import PolygonAreaTool, RectangleAreaTool, make_area_band
from .model_manager_dialog import ModelManagerDialog
from .prototype_identify import PrototypeIdentifyPanel, PrototypeIdentifyTool, identify_html
from .runtime.torch_build import CUDA_BUILDS, TorchBuild
from .settings import MODELS_DIR_ENV, PluginSettings, profile_folder
from .setup_task import SetupBackendTask, resolve_build
from .tasks import JobTask, PreparationError
from .worker_client import PLUGIN_ROOT, WorkerClient

FORM_CLASS, _ = uic.loadUiType(os.path.join(PLUGIN_ROOT, "ui", "dock.ui"))

#: (key, label) of the ways to choose an area.
AREA_MODES = (
    ("whole", "Whole raster"),
    ("canvas", "Canvas extent"),
    ("rectangle", "Draw a rectangle"),
    ("polygon", "Draw a polygon"),
    ("layer", "Polygons of a layer"),
)
#: The jobs the dock offers; each later capability adds its job here.
DOCK_TASKS = ("segment", "train", "classify", "train-skysense", "prototypes", "inspect")
#: The SkySense jobs: their inputs come from the date table, their model from the last SkySense training.
SKYSENSE_GROUP = "SkySense"
#: Parameters the dock fills from its own widgets; every other one gets a widget in the options form.
DOCK_SUPPLIED = ("image", "aoi", "labels", "cluster", "actors", "threads", "in_flight")
#: (key, label) of the torch builds Set up backend can install.
TORCH_BUILD_CHOICES = (("auto", "Auto (from the NVIDIA driver)"), ("cpu", "CPU only"),
                       *((tag, f"CUDA {version[0]}.{version[1]}") for tag, version in CUDA_BUILDS),
                       ("default", "PyPI's default build"))


class TerrafuseDock(QDockWidget, FORM_CLASS):
    """The dock's behaviour. ``jobDone(job, outcome)`` is emitted when a job ends (tests wait on it)."""

    jobDone = pyqtSignal(str, object)

    def __init__(self, iface: Any, client: WorkerClient, settings: PluginSettings, parent=None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("TerrafuseDock")
        self._make_scrollable()
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.client = client
        self.settings = settings
        self.task: Optional[JobTask] = None
        self.setup_task: Optional[SetupBackendTask] = None
        self.diagnostics_task: Optional[DiagnosticsTask] = None
        self.diagnostics_dialog: Optional[DiagnosticsDialog] = None
        self.last_selftest: Optional[Dict[str, Any]] = None
        self.options_form: Optional[JobOptionsForm] = None
        self.last_head: Optional[str] = None  # the head the last training saved, offered to Segment
        self.most_uncertain: Optional[Dict[str, Any]] = None
        self._drawn: Optional[AreaSelection] = None
        self._device = ""  # the device line of the last info job
        self._area_band = make_area_band(self.canvas)
        self._rectangle_tool = RectangleAreaTool(self.canvas)
        self._polygon_tool = PolygonAreaTool(self.canvas)
        for tool in (self._rectangle_tool, self._polygon_tool):
            tool.areaDrawn.connect(self._on_area_drawn)
            tool.deactivated.connect(lambda: self.drawAreaButton.setChecked(False))

        self.labelsGroup.setCollapsed(True)  # opened when labelling starts: the map's flow comes first
        self.labels_panel = LabelsPanel(self)
        self.labels_panel.message.connect(lambda text: self._show_status(text, error=True))
        self.rasterCombo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.areaLayerCombo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        for key, label in AREA_MODES:
            self.areaModeCombo.addItem(label, key)
        for name in DOCK_TASKS:
            if name in jobs.JOBS:  # a job this backend version lacks is not offered
                self.taskCombo.addItem(jobs.JOBS[name].title, name)
        self.pythonWidget.setStorageMode(QgsFileWidget.GetFile)
        self.pythonWidget.setFilePath(settings.python_path)
        for key, label in TORCH_BUILD_CHOICES:
            self.torchBuildCombo.addItem(label, key)
        self.torchBuildCombo.setCurrentIndex(max(0, self.torchBuildCombo.findData(settings.torch_build)))
        self.clusterEdit.setText(settings.cluster_address)
        self.clusterEdit.editingFinished.connect(
            lambda: setattr(self.settings, "cluster_address", self.clusterEdit.text()))
        self.clusterPlacement = ClusterPlacementRow(settings, self)  # actors, threads, batches in flight
        self.backendLayout.insertRow(self.backendLayout.getWidgetPosition(self.clusterEdit)[0] + 1,
                                     "Ray actors", self.clusterPlacement)

        self.areaModeCombo.currentIndexChanged.connect(self._on_area_mode_changed)
        self.rasterCombo.layerChanged.connect(self._on_raster_changed)
        self.areaLayerCombo.layerChanged.connect(self._update_area_label)
        self.selectedOnlyCheck.toggled.connect(self._update_area_label)
        self.drawAreaButton.toggled.connect(self._on_draw_toggled)
        self.clearAreaButton.clicked.connect(self.clear_area)
        self.taskCombo.currentIndexChanged.connect(self._on_task_changed)
        self.runButton.clicked.connect(self.run_task)
        self.cancelButton.clicked.connect(self.cancel_task)
        self.checkBackendButton.clicked.connect(self.check_backend)
        self.pythonWidget.fileChanged.connect(self._on_python_changed)
        self.torchBuildCombo.currentIndexChanged.connect(
            lambda: setattr(self.settings, "torch_build", self.torchBuildCombo.currentData()))
        self.setupBackendButton.clicked.connect(lambda: self.setup_backend())
        self.diagnosticsButton.clicked.connect(self.show_diagnostics)
        self.model_manager: Optional[ModelManagerDialog] = None
        self.modelsButton.clicked.connect(lambda: self.show_model_manager())
        self.client.extra_env.setdefault(MODELS_DIR_ENV, settings.models_dir)  # the worker's models folder
        self.zoomUncertainButton.clicked.connect(self.zoom_to_most_uncertain)
        self.zoomUncertainButton.hide()
        self.last_skysense_model: Optional[str] = None  # the model the last SkySense training saved
        self.series_task: Optional[JobTask] = None
        self.series_table = SeriesTable(iface, self.optionsContainer)
        self.optionsLayout.insertWidget(0, self.series_table)
        self.series_table.readRequested.connect(self.read_series)
        self.prototypeLayerCombo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.prototypeGroup.setCollapsed(True)  # opened when a prototype map arrives
        self._identify_tool = PrototypeIdentifyTool(self.canvas, self.prototypeLayerCombo.currentLayer)
        self.identify_panel = PrototypeIdentifyPanel(self)
        self._identify_tool.identified.connect(self.show_identified)
        self._identify_tool.failed.connect(lambda message: self._show_status(message, error=True))
        self._identify_tool.deactivated.connect(lambda: self.identifyPrototypeButton.setChecked(False))
        self.identifyPrototypeButton.toggled.connect(self._on_identify_toggled)
        self.prototypeOpacitySlider.valueChanged.connect(self.set_prototype_opacity)
        self.prototypeLayerCombo.layerChanged.connect(self._on_prototype_layer_changed)
        self._on_area_mode_changed()
        self._on_task_changed()
        self._on_raster_changed()

    # -- area -----------------------------------------------------------------------------
    @property
    def area_mode(self) -> str:
        return self.areaModeCombo.currentData()

    def set_area_mode(self, key: str) -> None:
        self.areaModeCombo.setCurrentIndex(self.areaModeCombo.findData(key))

    def _on_raster_changed(self) -> None:
        """A layer that is not a file (XYZ, WMS...) is exported first: show its resolution."""
        layer = self.rasterCombo.currentLayer()
        exported = isinstance(layer, QgsRasterLayer) and not is_file_raster(layer)
        self.gsdLabel.setVisible(exported)
        self.gsdSpin.setVisible(exported)

    def _on_area_mode_changed(self) -> None:
        mode = self.area_mode
        drawing = mode in ("rectangle", "polygon")
        self.drawAreaButton.setEnabled(drawing)
        self.clearAreaButton.setEnabled(drawing)
        self.areaLayerCombo.setEnabled(mode == "layer")
        self.selectedOnlyCheck.setEnabled(mode == "layer")
        if self.drawAreaButton.isChecked():
            self.drawAreaButton.setChecked(False)
        if drawing and self._drawn is None:
            self.drawAreaButton.setChecked(True)  # choosing "draw" means drawing now
        self._update_area_label()

    def _on_draw_toggled(self, checked: bool) -> None:
        tool = self._rectangle_tool if self.area_mode == "rectangle" else self._polygon_tool
        if checked:
            self.canvas.setMapTool(tool)
        else:
            for candidate in (self._rectangle_tool, self._polygon_tool):
                if self.canvas.mapTool() is candidate:
                    self.canvas.unsetMapTool(candidate)

    def _on_area_drawn(self, geometry: QgsGeometry) -> None:
        crs = self.canvas.mapSettings().destinationCrs()
        source = "Drawn rectangle" if self.area_mode == "rectangle" else "Drawn polygon"
        self._drawn = AreaSelection(geometry, crs, source)
        self.drawAreaButton.setChecked(False)
        self._update_area_label()

    def clear_area(self) -> None:
        self._drawn = None
        self._update_area_label()

    def current_area(self) -> Optional[AreaSelection]:
        """The area the next job covers; ``None`` for the whole raster."""
        mode = self.area_mode
        if mode == "whole":
            return None
        if mode == "canvas":
            crs = self.canvas.mapSettings().destinationCrs()
            return AreaSelection(QgsGeometry.fromRect(self.canvas.extent()), crs, "Canvas extent")
        if mode in ("rectangle", "polygon"):
            if self._drawn is None:
                raise AreaError("Draw the area on the map first (click Draw)")
            return self._drawn
        layer = self.areaLayerCombo.currentLayer()
        if layer is None:
            raise AreaError("Choose a polygon layer for the area")
        return area_from_layer(layer, self.selectedOnlyCheck.isChecked())

    def _update_area_label(self) -> None:
        self._area_band.reset(QgsWkbTypes.PolygonGeometry)
        try:
            area = self.current_area()
        except AreaError as exc:
            self.areaLabel.setText(str(exc))
            return
        if area is None:
            self.areaLabel.setText("Area: the whole raster")
            return
        self.areaLabel.setText(f"Area: {area.summary()}")
        if area.source != "Canvas extent":
            self._area_band.setToGeometry(area.in_crs(self.canvas.mapSettings().destinationCrs()), None)

    # -- tasks ----------------------------------------------------------------------------
    @property
    def current_job(self) -> str:
        return self.taskCombo.currentData()

    def set_task(self, job: str) -> None:
        self.taskCombo.setCurrentIndex(self.taskCombo.findData(job))

    def _on_task_changed(self) -> None:
        spec = jobs.JOBS[self.current_job]
        self.taskHelpLabel.setText(spec.help)
        if self.options_form is not None:
            self.optionsLayout.removeWidget(self.options_form)
            self.options_form.deleteLater()
        skysense = spec.group == SKYSENSE_GROUP and any(p.name == "s2" for p in spec.params)
        self.series_table.setVisible(skysense)
        supplied = DOCK_SUPPLIED + (SERIES_PARAMS if skysense else ())
        self.options_form = JobOptionsForm(spec, supplied, self.optionsContainer)
        self.optionsLayout.addWidget(self.options_form)
        last = self.last_skysense_model if spec.group == SKYSENSE_GROUP else self.last_head
        if last and "model" in self.options_form.widgets:
            self.options_form.set_value("model", last)
        self._fit_width()
        model_field = self.options_form.widgets.get("model")
        if skysense and isinstance(model_field, QLineEdit):  # each model reads its own bands: check again
            model_field.editingFinished.connect(self.series_table.request_read)

    def job_params(self, job: str) -> Dict[str, Any]:
        """The job's parameters from the dock's widgets; raises AreaError with a user message."""
        spec = jobs.JOBS[job]
        names = {p.name for p in spec.params}
        params: Dict[str, Any] = {}
        if "image" in names:
            layer = self.rasterCombo.currentLayer()
            if not isinstance(layer, QgsRasterLayer):
                raise AreaError("Choose a raster layer first")
            params["image"] = layer.source()
        if "aoi" in names:
            area = self.current_area()
            if area is not None:
                params["aoi"] = area.write()
        if "labels" in names:
            labels = self.labels_panel.labels
            if labels is None:
                raise AreaError("Choose or create a labels layer first (the Labels section)")
            params["labels"] = labels.path
        if spec.group == SKYSENSE_GROUP and "s2" in names:  # the inputs and their dates: the date table
            try:
                params.update(self.series_table.job_params())
            except InputsError as exc:
                raise AreaError(str(exc)) from None
        cluster = self.clusterEdit.text().strip()  # the Backend section's Ray cluster
        if "cluster" in names and cluster:
            params["cluster"] = cluster
            params.update(self.clusterPlacement.values(names))
        if self.options_form is not None and self.options_form.spec.name == job:
            params.update(self.options_form.values())
        for param in spec.params:  # a required output folder left empty: a new one in the profile
            if param.kind == "output_folder" and param.required and not params.get(param.name):
                params[param.name] = run_folder(job)
        return params

    def export_step(self, job: str):
        """For a raster that is not a file, the step that exports it in the task's thread; else None."""
        layer = self.rasterCombo.currentLayer()
        if "image" not in {p.name for p in jobs.JOBS[job].params} or not isinstance(layer, QgsRasterLayer):
            return None
        if is_file_raster(layer):
            return None
        area, gsd_m = self.current_area(), self.gsdSpin.value()
        layer = layer.clone()  # the task's own copy: providers are not shared across threads

        def export(params: Dict[str, Any]) -> Dict[str, Any]:
            try:
                return {**params, "image": export_raster(layer, area, gsd_m)}
            except ExportError as exc:
                raise PreparationError(str(exc)) from None

        return export

    def run_task(self, job: Optional[str] = None) -> Optional[JobTask]:
        job = job or self.current_job
        if self.task is not None:
            self._show_status("A job is already running", error=True)
            return None
        try:
            params = self.job_params(job)
        except AreaError as exc:
            self._show_status(str(exc), error=True)
            return None
        spec = jobs.JOBS[job]
        task = JobTask(self.client, job, params, f"Terrafuse: {spec.title}", prepare=self.export_step(job))
        task.progressMessage.connect(self._on_progress)
        task.jobFinished.connect(lambda outcome, job=job: self._on_finished(job, outcome))
        self.task = task
        self._set_running(True, f"{spec.title}: starting the backend…")
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel_task(self) -> None:
        if self.task is not None:
            self.statusLabel.setText("Cancelling…")
            self.task.cancel()

    def check_backend(self) -> Optional[JobTask]:
        """The self-test: device, speed, and a plain word when a GPU is present but unusable."""
        return self.run_task("selftest")

    def _on_python_changed(self, path: str) -> None:
        self.settings.python_path = path
        if path and path != self.client.python:
            self.client.stop()
            self.client.python = self.settings.python_path
            self.backendLabel.setText("Not started (interpreter changed): click Check backend")

    # -- backend set-up and diagnostics ----------------------------------------------------
    def setup_backend(self, confirm: bool = True, folder: Optional[str] = None,
                      build: Optional[TorchBuild] = None, **task_kwargs: Any) -> Optional[SetupBackendTask]:
        """Make the backend's environment (in the profile by default) and switch the worker to it."""
        if self.setup_task is not None or self.task is not None:
            self._show_status("Wait for the running job to finish first", error=True)
            return None
        folder = folder or self.settings.backend_env_dir
        if build is None and "requirements" not in task_kwargs:
            build = resolve_build(self.torchBuildCombo.currentData())
        if confirm:
            what = f"torch {build.label} ({build.reason})" if build else "the pinned packages"
            answer = QMessageBox.question(
                self, "Set up the Terrafuse backend",
                f"Create the backend's Python environment in\n{folder}\nand install {what}?\n\n"
                "This downloads a few GB the first time. Nothing is installed into QGIS's own Python.")
            if answer != QMessageBox.Yes:
                return None
        task = SetupBackendTask(folder, build, **task_kwargs)
        task.progressMessage.connect(self._on_progress)
        task.setupFinished.connect(self._on_setup_finished)
        self.setup_task = task
        self._set_running(True, f"Setting up the backend in {folder}…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_setup_finished(self, outcome: Dict[str, Any]) -> None:
        self.setup_task = None
        if outcome["status"] != "ok":
            self._set_running(False, "")
            self._show_status(f"Set up backend: {outcome['message']}", error=outcome["status"] == "error")
            self.jobDone.emit("setup", outcome)
            return
        self._set_running(False, f"Backend set up ({outcome['build']}); checking it…")
        self.pythonWidget.setFilePath(outcome["python"])  # switches the worker (see _on_python_changed)
        self.jobDone.emit("setup", outcome)
        self.check_backend()

    def show_model_manager(self) -> ModelManagerDialog:
        """The model manager dialog, listing the catalogue as it opens."""
        if self.model_manager is None:
            self.model_manager = ModelManagerDialog(self.client, self.settings, self)
        self.model_manager.show()
        self.model_manager.raise_()
        self.model_manager.refresh()
        return self.model_manager

    def show_diagnostics(self) -> DiagnosticsTask:
        task = DiagnosticsTask(self.client, self.settings.models_dir, self.last_selftest)
        task.reportReady.connect(self._on_diagnostics_ready)
        self.diagnostics_task = task
        self.statusLabel.setText("Collecting diagnostics…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_diagnostics_ready(self, report: str) -> None:
        self.diagnostics_task = None
        self.statusLabel.setText("Diagnostics ready")
        self.diagnostics_dialog = DiagnosticsDialog(report, self)
        self.diagnostics_dialog.show()
        self.jobDone.emit("diagnostics", {"status": "ok", "result": {"report": report}})

    def _set_running(self, running: bool, message: str) -> None:
        self.runButton.setEnabled(not running)
        self.checkBackendButton.setEnabled(not running)
        self.setupBackendButton.setEnabled(not running)
        self.cancelButton.setEnabled(running)
        if running:
            self.progressBar.setValue(0)
        self.statusLabel.setText(message)

    def _make_scrollable(self) -> None:
        """Put the dock's contents in a scroll area: with Labels and the options open the dock is taller
        than most screens, and without scrolling Qt squeezes the result pane to nothing."""
        scroll = QScrollArea(self)
        scroll.setObjectName("dockScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # scroll down only: never clip a button
        scroll.setWidget(self.dockContents)
        self.setWidget(scroll)
        self._scroll = scroll
        self._fit_width()

    def _fit_width(self) -> None:
        """The dock no narrower than its contents (they change with the task's options)."""
        scrollbar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self.dockContents.minimumSizeHint().width() + scrollbar)

    def _on_progress(self, done: int, total: int, message: str, left_s: float) -> None:
        if total > 0:
            self.progressBar.setValue(int(100 * done / total))
        eta = f", about {_duration(left_s)} left" if left_s >= 0 else ""
        device = f" — {self._device}" if self._device else ""
        self.statusLabel.setText(f"{done} of {total} done{eta} — {message}{device}")

    def _on_finished(self, job: str, outcome: Dict[str, Any]) -> None:
        self.task = None
        status = outcome["status"]
        if status == "ok":
            self.progressBar.setValue(100)
            self._set_running(False, f"Done in {outcome.get('elapsed_s', 0):.1f} s")
            self.show_result(job, outcome["result"])
        elif status == "cancelled":
            self._set_running(False, "Cancelled")
            self.progressBar.setValue(0)
        else:
            self._set_running(False, "")
            self._show_status(outcome["message"], error=True)
        self.jobDone.emit(job, outcome)

    def _show_status(self, message: str, error: bool = False) -> None:
        self.statusLabel.setText(message)
        if error:
            self.iface.messageBar().pushMessage("Terrafuse", message.splitlines()[0], level=Qgis.Warning,
                                                duration=8)

    # -- results --------------------------------------------------------------------------
    def show_result(self, job: str, result: Dict[str, Any]) -> None:
        spec = jobs.JOBS[job]
        try:
            if result.get("layers"):
                add_result_layers(result, spec.title)
            if result.get("preview", {}).get("layers"):
                add_result_layers(result["preview"], "Preview")
        except LayerError as exc:
            self._show_status(str(exc), error=True)
        if job == "train-skysense":
            self.last_skysense_model = result.get("model")
            self.resultBrowser.setHtml(metrics_html(result))
        elif job == "prototypes":
            self._show_prototype_map(result)
        if job == "train":
            self.last_head = result.get("model")
            self.most_uncertain = result.get("most_uncertain")
            self.zoomUncertainButton.setVisible(self.most_uncertain is not None)
            self.resultBrowser.setHtml(metrics_html(result))
        elif job == "segment":
            self.resultBrowser.setHtml(segment_html(result))
        self._show_result_details(job, result)

    def zoom_to_most_uncertain(self) -> None:
        if not self.most_uncertain:
            return
        west, south, east, north = self.most_uncertain["bounds_wgs84"]
        transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"),
                                           self.canvas.mapSettings().destinationCrs(), QgsProject.instance())
        extent = transform.transformBoundingBox(QgsRectangle(west, south, east, north))
        extent.scale(1.5)
        self.canvas.setExtent(extent)
        self.canvas.refresh()

    # -- SkySense: the date table and the prototype map -------------------------------------
    def read_series(self, params: Dict[str, Any]) -> JobTask:
        """Dates and checks of the table's rasters from the worker (the ``series`` job), against the bands
        of the model chosen in the options (each SkySense model reads its own bands)."""
        model = self.options_form.values().get("model") if self.options_form is not None else None
        if model and jobs.JOBS[self.current_job].group == SKYSENSE_GROUP:
            params = {**params, "model": model}
        task = JobTask(self.client, "series", params, "Terrafuse: reading the dates of the inputs")
        task.jobFinished.connect(self._on_series_read)
        self.series_task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_series_read(self, outcome: Dict[str, Any]) -> None:
        self.series_task = None
        if outcome["status"] == "ok":
            self.series_table.apply_series(outcome["result"])
        else:
            self.series_table.statusLabel.setText(html.escape(outcome.get("message", "")))
        self.jobDone.emit("series", outcome)

    def _show_prototype_map(self, result: Dict[str, Any]) -> None:
        """Offer the new prototype map to Identify and Opacity."""
        path = result.get("outputs", {}).get("prototypes")
        for layer in QgsProject.instance().mapLayers().values():
            same = path and os.path.normpath(layer.source()) == os.path.normpath(path)
            if isinstance(layer, QgsRasterLayer) and same:
                self.prototypeLayerCombo.setLayer(layer)
        self.prototypeGroup.setCollapsed(False)
        self.resultBrowser.setHtml("<h3>Prototype map</h3><p>Regions: "
                                   + html.escape(", ".join(str(r) for r in result.get("regions", [])))
                                   + "</p><p>Click <b>Identify</b>, then a cell of the map: its similarity to every "
                                   "prototype of its region.</p>")

    def show_identified(self, info: Optional[Dict[str, Any]]) -> None:
        """A click's prototypes: in the identify window beside the map, and in the dock's result pane."""
        self.resultBrowser.setHtml(identify_html(info))
        self.identify_panel.show_info(info)

    def _on_identify_toggled(self, checked: bool) -> None:
        if checked:
            self.canvas.setMapTool(self._identify_tool)
        elif self.canvas.mapTool() is self._identify_tool:
            self.canvas.unsetMapTool(self._identify_tool)

    def _on_prototype_layer_changed(self) -> None:
        layer = self.prototypeLayerCombo.currentLayer()
        if isinstance(layer, QgsRasterLayer) and layer.renderer() is not None:
            self.prototypeOpacitySlider.blockSignals(True)
            self.prototypeOpacitySlider.setValue(round(100 * layer.renderer().opacity()))
            self.prototypeOpacitySlider.blockSignals(False)

    def set_prototype_opacity(self, percent: int) -> None:
        """The slider acts on the layer's own opacity (as Layer Properties > Transparency does)."""
        layer = self.prototypeLayerCombo.currentLayer()
        if isinstance(layer, QgsRasterLayer) and layer.renderer() is not None:
            layer.renderer().setOpacity(percent / 100.0)
            layer.triggerRepaint()
            layer.emitStyleChanged()

    def _show_result_details(self, job: str, result: Dict[str, Any]) -> None:
        if job in ("info", "selftest"):
            self._device = describe_device(result)
            check = result.get("gpu_check", {})
            if check.get("status") == "gpu_unusable":
                self.backendLabel.setText(f"<span style='color:#c62828'>{html.escape(check['message'])}</span>")
                self._show_status(check["message"], error=True)
            else:
                speed = result.get("speed")
                extra = f" — {speed['matmul_gflops']:,.0f} GFLOP/s" if speed else ""
                self.backendLabel.setText(html.escape(self._device + extra))
            if job == "selftest":
                self.last_selftest = result
            self.resultBrowser.setHtml(info_html(result))
        elif job == "inspect":
            self.resultBrowser.setHtml(inspect_html(result))

    def cleanup(self) -> None:
        """Leave nothing behind on the canvas: tools unset, rubber bands removed, task cancelled."""
        if self.model_manager is not None:
            self.model_manager.cancel()
            self.model_manager.close()
        for task in (self.task, self.setup_task):
            if task is not None:
                task.cancel()
        for tool in (self._rectangle_tool, self._polygon_tool, self._identify_tool, *self.labels_panel.tools()):
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
        bands = [self._area_band] + [tool._band for tool in (self._rectangle_tool, self._polygon_tool,
                                                            *self.labels_panel.tools()) if hasattr(tool, "_band")]
        for item in bands:
            self.canvas.scene().removeItem(item)


def run_folder(job: str) -> str:
    """A new folder for a job's outputs in the profile: runs never overwrite each other."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(profile_folder(), "runs", f"{job}-{stamp}")
    suffix = 1
    while os.path.exists(folder):
        suffix += 1
        folder = os.path.join(profile_folder(), "runs", f"{job}-{stamp}-{suffix}")
    return folder


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def metrics_html(result: Dict[str, Any]) -> str:
    """The training's validation: per-class scores, the overall figures, the confusion matrix, the baseline."""
    metrics = result.get("metrics", {})
    parts = [f"<h3>Head saved</h3><p>{html.escape(str(result.get('model', '')))}</p>"]
    if not metrics.get("validated", "per_class" in metrics):
        parts.append(f"<p style='color:#b26a00'>{html.escape(metrics.get('message') or 'Not validated')}</p>")
    if metrics.get("per_class"):
        header = "".join(f"<th nowrap>{h}</th>" for h in ("Class", "Precision", "Recall", "F1", "IoU", "Pixels"))
        rows = "".join(
            "<tr>" + "".join(f"<td align='right' nowrap>{html.escape(str(v))}</td>" for v in (
                c.get("class_name"), _pct(c.get("precision")), _pct(c.get("recall")), _pct(c.get("f1")),
                _pct(c.get("iou")), f"{c.get('support_px', 0):,}")) + "</tr>"
            for c in metrics["per_class"])
        parts.append(f"<table cellspacing='2' cellpadding='2'><tr>{header}</tr>{rows}</table>")
        parts.append(f"<p>Overall accuracy {_pct(metrics.get('overall_accuracy'))} %, macro F1 "
                     f"{_pct(metrics.get('macro_f1'))} %, mIoU {_pct(metrics.get('miou'))} %</p>")
    matrix = metrics.get("confusion_matrix")
    if matrix and matrix.get("matrix"):
        names = matrix["classes"]
        header = "<th>true \\ predicted</th>" + "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
        rows = "".join(f"<tr><th align='left'>{html.escape(str(name))}</th>"
                       + "".join(f"<td align='right'>{v:,}</td>" for v in row) + "</tr>"
                       for name, row in zip(names, matrix["matrix"]))
        parts.append("<h4>Confusion matrix (held-out pixels)</h4>"
                     f"<table cellspacing='2'><tr>{header}</tr>{rows}</table>")
    baseline = result.get("baseline")
    if baseline:
        name = html.escape(str(baseline.get("name", "random forest")))
        parts.append(f"<p><b>Baseline</b> ({name}): overall accuracy {_pct(baseline.get('overall_accuracy'))} %, "
                     f"macro F1 {_pct(baseline.get('macro_f1'))} %, mIoU {_pct(baseline.get('miou'))} %</p>")
    return "".join(parts)


def segment_html(result: Dict[str, Any]) -> str:
    counts = result.get("class_px", {})
    total = sum(counts.values()) or 1
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td align='right'>{100 * n / total:.1f} %</td></tr>"
                   for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"<h3>Land cover</h3><p>{result.get('width')} × {result.get('height')} px in {result.get('tiles')} tiles "
            f"on {html.escape(str(result.get('device')))}, {result.get('seconds', 0):.1f} s</p>"
            f"<table cellspacing='2'>{rows}</table>")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_device(info: Dict[str, Any]) -> str:
    """One line for the dock: the device jobs will use."""
    devices = info.get("devices", [])
    chosen = info.get("device", "cpu")
    for device in devices:
        if device["type"] == "cuda" and chosen == f"cuda:{device['index']}":
            return (f"GPU: {device['name']} ({device['free_memory_mb'] / 1024:.1f} of "
                    f"{device['total_memory_mb'] / 1024:.1f} GiB free) — torch {info.get('torch')}")
    cpu = next((d for d in devices if d["type"] == "cpu"), {})
    torch_version = info.get("torch") or "not installed"
    return f"CPU: {cpu.get('cores', '?')} cores — torch {torch_version}"


def _rows(pairs) -> str:
    return "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in pairs)


def info_html(info: Dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items() if v)
    pairs = [
        ("Device", describe_device(info)),
        ("Python", f"{info.get('python')} ({info.get('executable')})"),
        ("CUDA", info.get("cuda_build") or "CPU-only build"),
        ("Packages", packages),
    ]
    if info.get("gpu_check"):
        pairs.insert(1, ("GPU check", info["gpu_check"]["message"]))
    pairs += list(info.get("benchmarks", {}).items())
    return f"<h3>Backend</h3><table cellspacing='4'>{_rows(pairs)}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def inspect_html(result: Dict[str, Any]) -> str:
    area = result["area"]
    resolution = result.get("resolution_m")
    pairs = [
        ("File", os.path.basename(result["path"])),
        ("CRS", result.get("crs_name") or "none"),
        ("Size", f"{result['width']} × {result['height']} px, {result['count']} bands"),
        ("Resolution", f"{resolution[0]:.3g} × {resolution[1]:.3g} m" if resolution else "unknown (no CRS)"),
        ("Area", f"{area['window']['width']} × {area['window']['height']} px"
                 + (f", {area['area_km2']:.3f} km²" if area.get("area_km2") is not None else "")),
    ]
    if area.get("decimation", 1) > 1:
        pairs.append(("Sampled", f"every {area['decimation']:.1f} px ({area['sampled_px']:,} px)"))
    nodata = {band["nodata"] for band in result["bands"]}
    pairs.append(("Nodata", ", ".join(_fmt(v) for v in nodata)))
    header = "".join(f"<th align='right' nowrap>{h}</th>" for h in ("Band", "Type", "P2", "Median", "P98", "Valid"))
    rows = []
    for band in result["bands"]:
        stats = band["statistics"]
        name = band["description"] or band["colour"] or f"band {band['index']}"
        cells = [f"{band['index']} {name}", band["dtype"], stats.get("p2"), stats.get("p50"), stats.get("p98"),
                 f"{stats.get('valid_px', 0):,}"]
        rows.append("<tr>" + "".join(f"<td align='right' nowrap>{html.escape(_fmt(c))}</td>" for c in cells)
                    + "</tr>")
    warnings = "".join(f"<p style='color:#b26a00'>{html.escape(w)}</p>" for w in result.get("warnings", []))
    return (f"<h3>{html.escape(os.path.basename(result['path']))}</h3>{warnings}"
            f"<table cellspacing='4'>{_rows(pairs)}</table>"
            f"<table border='0' cellspacing='2' cellpadding='3'><tr>{header}</tr>{''.join(rows)}</table>")
