"""The dock's Backend section: the worker's Python, the torch build Set up installs, the Ray cluster, Check
backend (its result shown here, never over a task's result), diagnostics and the model manager."""

from __future__ import annotations

import html
from typing import Any, Dict, Optional

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject
from qgis.PyQt.QtWidgets import QMessageBox, QTextBrowser

from ..cluster_placement import ClusterPlacementRow
from ..diagnostics_dialog import DiagnosticsDialog, DiagnosticsTask
from ..model_manager_dialog import ModelManagerDialog
from ..runtime.torch_build import CUDA_BUILDS, TorchBuild
from ..settings import MODELS_DIR_ENV
from ..setup_task import SetupBackendTask, resolve_build
from .results import describe_device, info_html

#: (key, label) of the torch builds Set up backend can install.
TORCH_BUILD_CHOICES = (("auto", "Auto (from the NVIDIA driver)"), ("cpu", "CPU only"),
                       *((tag, f"CUDA {version[0]}.{version[1]}") for tag, version in CUDA_BUILDS),
                       ("default", "PyPI's default build"))


class BackendSection(QObject):
    """Behaviour of the Backend widgets of ``dock``."""

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.settings = dock.settings
        self.client = dock.client
        self.setup_task: Optional[SetupBackendTask] = None
        self.diagnostics_task: Optional[DiagnosticsTask] = None
        self.diagnostics_dialog: Optional[DiagnosticsDialog] = None
        self.model_manager: Optional[ModelManagerDialog] = None
        self.last_selftest: Optional[Dict[str, Any]] = None
        self.device = ""  # the device line of the last check
        self.browser = QTextBrowser(dock.backendGroup)  # what Check backend found, in its own section
        self.browser.setObjectName("backendBrowser")
        self.browser.setMaximumHeight(160)
        self.browser.hide()
        dock.backendLayout.addRow(self.browser)
        dock.pythonWidget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        dock.pythonWidget.setFilePath(self.settings.python_path)
        for key, label in TORCH_BUILD_CHOICES:
            dock.torchBuildCombo.addItem(label, key)
        dock.torchBuildCombo.setCurrentIndex(max(0, dock.torchBuildCombo.findData(self.settings.torch_build)))
        dock.clusterEdit.setText(self.settings.cluster_address)
        dock.clusterEdit.editingFinished.connect(
            lambda: setattr(self.settings, "cluster_address", dock.clusterEdit.text()))
        self.placement = ClusterPlacementRow(self.settings, dock)  # actors, threads, batches in flight
        dock.clusterPlacement = self.placement
        dock.backendLayout.insertRow(dock.backendLayout.getWidgetPosition(dock.clusterEdit)[0] + 1, "Ray actors",
                                     self.placement)
        dock.pythonWidget.fileChanged.connect(self._on_python_changed)
        dock.torchBuildCombo.currentIndexChanged.connect(
            lambda: setattr(self.settings, "torch_build", dock.torchBuildCombo.currentData()))
        dock.setupBackendButton.clicked.connect(lambda: self.setup_backend())
        dock.diagnosticsButton.clicked.connect(self.show_diagnostics)
        dock.modelsButton.clicked.connect(lambda: self.show_model_manager())
        self.client.extra_env.setdefault(MODELS_DIR_ENV, self.settings.models_dir)  # the worker's models folder

    @property
    def cluster_address(self) -> str:
        return self.dock.clusterEdit.text().strip()

    def _on_python_changed(self, path: str) -> None:
        self.settings.python_path = path
        if path and path != self.client.python:
            self.client.stop()
            self.client.python = self.settings.python_path
            self.dock.backendLabel.setText("Not started (interpreter changed): click Check backend")

    def show_check(self, job: str, result: Dict[str, Any]) -> None:
        """The info or self-test result: the device line, and the details in the section's own pane."""
        self.device = describe_device(result)
        check = result.get("gpu_check", {})
        if check.get("status") == "gpu_unusable":
            self.dock.backendLabel.setText(f"<span style='color:#c62828'>{html.escape(check['message'])}</span>")
            self.dock.show_status(check["message"], error=True)
        else:
            speed = result.get("speed")
            extra = f" — {speed['matmul_gflops']:,.0f} GFLOP/s" if speed else ""
            self.dock.backendLabel.setText(html.escape(self.device + extra))
        if job == "selftest":
            self.last_selftest = result
        self.browser.setHtml(info_html(result))
        self.browser.show()

    # -- set-up, diagnostics, models ---------------------------------------------------------
    def setup_backend(self, confirm: bool = True, folder: Optional[str] = None,
                      build: Optional[TorchBuild] = None, **task_kwargs: Any) -> Optional[SetupBackendTask]:
        """Make the backend's environment (in the profile by default) and switch the worker to it."""
        dock = self.dock
        if self.setup_task is not None or dock.task is not None:
            dock.show_status("Wait for the running job to finish first", error=True)
            return None
        folder = folder or self.settings.backend_env_dir
        if build is None and "requirements" not in task_kwargs:
            build = resolve_build(dock.torchBuildCombo.currentData())
        if confirm:
            what = f"torch {build.label} ({build.reason})" if build else "the pinned packages"
            answer = QMessageBox.question(
                dock, "Set up the Terrafuse backend",
                f"Create the backend's Python environment in\n{folder}\nand install {what}?\n\n"
                "This downloads a few GB the first time. Nothing is installed into QGIS's own Python.")
            if answer != QMessageBox.StandardButton.Yes:
                return None
        task = SetupBackendTask(folder, build, **task_kwargs)
        task.progressMessage.connect(dock.status.setup_progress)
        task.setupFinished.connect(self._on_setup_finished)
        self.setup_task = task
        dock.set_running(True, f"Setting up the backend in {folder}…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_setup_finished(self, outcome: Dict[str, Any]) -> None:
        dock = self.dock
        self.setup_task = None
        if outcome["status"] != "ok":
            dock.set_running(False, "")
            dock.show_status(f"Set up backend: {outcome['message']}", error=outcome["status"] == "error")
            dock.jobDone.emit("setup", outcome)
            return
        dock.set_running(False, f"Backend set up ({outcome['build']}); checking it…")
        dock.pythonWidget.setFilePath(outcome["python"])  # switches the worker (see _on_python_changed)
        dock.jobDone.emit("setup", outcome)
        dock.check_backend()

    def show_model_manager(self) -> ModelManagerDialog:
        """The model manager dialog, listing the catalogue as it opens."""
        if self.model_manager is None:
            self.model_manager = ModelManagerDialog(self.client, self.settings, self.dock)
        self.model_manager.show()
        self.model_manager.raise_()
        self.model_manager.refresh()
        return self.model_manager

    def show_diagnostics(self) -> DiagnosticsTask:
        task = DiagnosticsTask(self.client, self.settings.models_dir, self.last_selftest)
        task.reportReady.connect(self._on_diagnostics_ready)
        self.diagnostics_task = task
        self.dock.status.set_text("Collecting diagnostics…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_diagnostics_ready(self, report: str) -> None:
        self.diagnostics_task = None
        self.dock.status.set_text("Diagnostics ready")
        self.diagnostics_dialog = DiagnosticsDialog(report, self.dock)
        self.diagnostics_dialog.show()
        self.dock.jobDone.emit("diagnostics", {"status": "ok", "result": {"report": report}})

    def cleanup(self) -> None:
        if self.model_manager is not None:
            self.model_manager.cancel()
            self.model_manager.close()
        if self.setup_task is not None:
            self.setup_task.cancel()
