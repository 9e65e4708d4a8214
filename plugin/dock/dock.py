"""The Terrafuse dock: choose a raster, an area and a task, run it in the worker, see the result.

The layout lives in ui/dock.ui; each section's behaviour lives in a module of its own (input, labels, task and
its form, status, results, prototype map, backend) and this class composes them and runs the jobs.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from qgis.core import Qgis, QgsApplication
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QDockWidget, QFrame, QScrollArea

from ...backend import jobs
from ..area import AreaError
from ..job_progress import ProgressState
from ..labels_panel import LabelsPanel
from ..layers import LayerError, add_result_layers
from ..settings import PluginSettings
from ..tasks import JobTask
from ..worker_client import PLUGIN_ROOT, WorkerClient
from .backend_section import BackendSection
from .input_section import InputSection
from .prototype_section import PrototypeSection
from .results import RESULT_PAGES, ResultsPane, warnings_html
from .status import StatusView
from .task_section import TaskSection

FORM_CLASS, _ = uic.loadUiType(os.path.join(PLUGIN_ROOT, "ui", "dock.ui"))

#: Short names of the tasks in the Layers panel's group names (task · model · time).
GROUP_NAMES = {"segment": "Land cover", "train": "Training", "classify": "SkySense classes",
               "train-skysense": "SkySense training", "prototypes": "Prototypes", "preview": "Preview"}
#: Opacity of a training's preview: the scene shows through, the labels stay on top.
PREVIEW_OPACITY = 0.6
#: Jobs whose result belongs to the Backend section, not to a task's page.
BACKEND_JOBS = ("info", "selftest")


class TerrafuseDock(QDockWidget, FORM_CLASS):
    """The dock's behaviour. ``jobDone(job, outcome)`` is emitted when a job ends (tests wait on it)."""

    jobDone = pyqtSignal(str, object)

    def __init__(self, iface: Any, client: WorkerClient, settings: PluginSettings, parent=None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("TerrafuseDock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.client = client
        self.settings = settings
        self.task: Optional[JobTask] = None
        self._make_scrollable()
        self.status = StatusView(self)
        self.results = ResultsPane(self)
        self.input = InputSection(self)
        self.labelsGroup.setCollapsed(True)  # opened when labelling starts: the map's flow comes first
        self.labels_panel = LabelsPanel(self)
        self.labels_panel.message.connect(lambda text: self.show_status(text, error=True))
        self.labels_panel.notice.connect(self.show_status)
        self.backend = BackendSection(self)
        self.tasks = TaskSection(self)
        self.tasks.taskChanged.connect(self._on_task_changed)
        self.tasks.seriesRead.connect(lambda outcome: self.jobDone.emit("series", outcome))
        self.prototypes = PrototypeSection(self)
        self.runButton.clicked.connect(lambda: self.run_task())
        self.cancelButton.clicked.connect(self.cancel_task)
        self.checkBackendButton.clicked.connect(self.check_backend)
        self.tasks.rebuild_form()

    # -- what the sections hold, under the names the dock always had ------------------------------
    @property
    def options_form(self):
        return self.tasks.options_form

    @property
    def series_table(self):
        return self.tasks.series_table

    @property
    def series_task(self):
        return self.tasks.series_task

    @property
    def last_head(self) -> Optional[str]:
        return self.tasks.last_head

    @property
    def last_skysense_model(self) -> Optional[str]:
        return self.tasks.last_skysense_model

    @property
    def most_uncertain(self):
        return self.results.most_uncertain

    @property
    def identify_panel(self):
        return self.prototypes.identify_panel

    @property
    def _identify_tool(self):
        return self.prototypes.identify_tool

    @property
    def setup_task(self):
        return self.backend.setup_task

    @property
    def model_manager(self):
        return self.backend.model_manager

    @property
    def diagnostics_dialog(self):
        return self.backend.diagnostics_dialog

    @property
    def last_selftest(self):
        return self.backend.last_selftest

    @property
    def backendBrowser(self):
        return self.backend.browser

    @property
    def current_job(self) -> str:
        return self.tasks.current_job

    def set_task(self, job: str) -> None:
        self.tasks.set_task(job)

    def set_area_mode(self, key: str) -> None:
        self.input.set_area_mode(key)

    def current_area(self):
        return self.input.current_area()

    def clear_area(self) -> None:
        self.input.clear_area()

    def job_params(self, job: str) -> Dict[str, Any]:
        return self.tasks.job_params(job)

    def read_series(self, params: Dict[str, Any]) -> JobTask:
        return self.tasks.read_series(params)

    def show_identified(self, info) -> None:
        self.prototypes.show_identified(info)

    def set_prototype_opacity(self, percent: int) -> None:
        self.prototypes.set_opacity(percent)

    def zoom_to_most_uncertain(self) -> None:
        self.results.zoom_to_most_uncertain()

    def setup_backend(self, *args: Any, **kwargs: Any):
        return self.backend.setup_backend(*args, **kwargs)

    def show_model_manager(self):
        return self.backend.show_model_manager()

    def show_diagnostics(self):
        return self.backend.show_diagnostics()

    # -- the task ---------------------------------------------------------------------------------
    def _on_task_changed(self, job: str) -> None:
        self.results.show_task(job)
        self.fit_width()

    def run_task(self, job: Optional[str] = None) -> Optional[JobTask]:
        job = job or self.current_job
        if self.task is not None:
            self.show_status("A job is already running", error=True)
            return None
        try:
            params = self.job_params(job)
            prepare = self.input.export_step("image" in {p.name for p in jobs.JOBS[job].params})
        except AreaError as exc:
            self.show_status(str(exc), error=True)
            return None
        spec = jobs.JOBS[job]
        task = JobTask(self.client, job, params, f"Terrafuse: {spec.title}", prepare=prepare)
        task.progressChanged.connect(self._on_progress)
        task.jobFinished.connect(lambda outcome, job=job: self._on_finished(job, outcome))
        self.task = task
        if job not in BACKEND_JOBS:
            self.results.clear(job)  # the task's old result goes as its new job starts
        self.set_running(True, f"{spec.title}: starting the backend…")
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel_task(self) -> None:
        if self.task is not None:
            self.status.set_text("Cancelling…")
            self.task.cancel()

    def check_backend(self) -> Optional[JobTask]:
        """The self-test: device, speed, and a plain word when a GPU is present but unusable."""
        return self.run_task("selftest")

    def set_running(self, running: bool, message: str) -> None:
        self.runButton.setEnabled(not running)
        self.checkBackendButton.setEnabled(not running)
        self.setupBackendButton.setEnabled(not running)
        self.cancelButton.setEnabled(running)
        if running:
            self.status.start(message)
        else:
            self.status.set_text(message)

    def _on_progress(self, state: ProgressState) -> None:
        if self.task is not None:
            self.status.progress(state)
        if state.device and not self.backend.device:  # the Backend section knows the device without a check
            self.backendLabel.setText(state.device)

    def _on_finished(self, job: str, outcome: Dict[str, Any]) -> None:
        self.task = None
        status = outcome["status"]
        if status == "ok":
            self.progressBar.setValue(100)
            self.set_running(False, f"Done in {outcome.get('elapsed_s', 0):.1f} s")
            self.show_result(job, outcome["result"])
        elif status == "cancelled":
            self.set_running(False, "Cancelled")
            self.progressBar.setValue(0)
        else:
            self.set_running(False, "")
            message = outcome["message"]
            plain = outcome.get("user_error") and "\n" not in message.strip()
            self.status.failed(message, "" if plain else self._details(job, outcome))
        self.jobDone.emit(job, outcome)

    def _details(self, job: str, outcome: Dict[str, Any]) -> str:
        """What "Details" opens: the whole message and, for an internal error, the worker's last log lines."""
        lines = [f"{jobs.JOBS[job].title if job in jobs.JOBS else job}: {outcome.get('error_type', 'Error')}",
                 "", outcome.get("message", "")]
        if not outcome.get("user_error"):
            lines += ["", "Recent backend errors:", *self.client.recent_errors]
        return "\n".join(lines)

    def show_status(self, message: str, error: bool = False) -> None:
        """A line in the status; an error also goes to the message bar (its first line only)."""
        if error:
            self.status.failed(message)
        else:
            self.status.set_text(message)

    # -- results ----------------------------------------------------------------------------------
    def show_result(self, job: str, result: Dict[str, Any]) -> None:
        try:
            self._add_layers(job, result)
        except LayerError as exc:
            self.show_status(str(exc), error=True)
        if job in BACKEND_JOBS:
            self.backend.show_check(job, result)
            return
        if job == "train":
            self.tasks.last_head = result.get("model")
        elif job == "train-skysense":
            self.tasks.last_skysense_model = result.get("model")
        elif job == "prototypes":
            self.prototypes.show_map(result)
        page = RESULT_PAGES.get(job)
        if page is None:
            return
        warnings = [] if job == "inspect" else list(result.get("warnings") or [])  # inspect lists its own
        self.results.set_page(job, warnings_html(warnings) + page(result))
        if warnings:  # e.g. prototypes never learned, and how to learn them: above the result and in the bar
            self.iface.messageBar().pushMessage("Terrafuse", str(warnings[0]), level=Qgis.MessageLevel.Warning,
                                                duration=10)

    def _add_layers(self, job: str, result: Dict[str, Any]) -> None:
        """The outputs in a group named task · model · time, under the labels; a preview semi-transparent."""
        labels = self.labels_panel.labels.layer if self.labels_panel.labels is not None else None
        when = time.time()
        if result.get("layers"):
            add_result_layers(result, GROUP_NAMES.get(job, jobs.JOBS[job].title), below=labels, when=when)
        preview = result.get("preview") or {}
        if preview.get("layers"):
            group = add_result_layers(preview, GROUP_NAMES["preview"], below=labels, when=when,
                                      opacity=PREVIEW_OPACITY)
            uncertainty = next((node.layer() for node in group.findLayers()
                                if os.path.basename(node.layer().source()).startswith("uncertainty")), None)
            self.results.set_most_uncertain(result.get("most_uncertain"), uncertainty)
        elif job == "train":
            self.results.set_most_uncertain(result.get("most_uncertain"))

    # -- layout -----------------------------------------------------------------------------------
    def _make_scrollable(self) -> None:
        """Put the dock's contents in a scroll area: with Labels and the options open the dock is taller
        than most screens, and without scrolling Qt squeezes the result pane to nothing."""
        scroll = QScrollArea(self)
        scroll.setObjectName("dockScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # down only: never clip
        scroll.setWidget(self.dockContents)
        self.setWidget(scroll)
        self._scroll = scroll

    def fit_width(self) -> None:
        """The dock no narrower than its contents (they change with the task's form): QGIS cannot make it
        narrower, so nothing is ever clipped."""
        self.dockContents.adjustSize()
        scrollbar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self.dockContents.minimumSizeHint().width() + scrollbar)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.fit_width()  # the first show: the widgets are polished, their sizes final

    def cleanup(self) -> None:
        """Leave nothing behind on the canvas: tools unset, rubber bands removed, task cancelled."""
        self.backend.cleanup()
        if self.task is not None:
            self.task.cancel()
        tools = [*self.input.tools(), self.prototypes.identify_tool, *self.labels_panel.tools()]
        for tool in tools:
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
        bands = [self.input.band] + [tool._band for tool in tools if hasattr(tool, "_band")]
        for item in bands:
            self.canvas.scene().removeItem(item)

