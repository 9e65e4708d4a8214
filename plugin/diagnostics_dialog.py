"""The diagnostics report, gathered in a task and shown in a dialog with a Copy button."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import Qgis, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFont
from qgis.PyQt.QtWidgets import QApplication, QDialog, QDialogButtonBox, QPlainTextEdit, QPushButton, QVBoxLayout

from .runtime.diagnostics import build_report, model_folder_listing
from .runtime.gpu import query_gpus
from .worker_client import JobFailed, WorkerClient, WorkerError

INFO_TIMEOUT_S = 120.0


class DiagnosticsTask(QgsTask):
    """Collects the report off the UI thread (checksums of model files take a while the first time)."""

    reportReady = pyqtSignal(str)

    def __init__(self, client: WorkerClient, models_dir: str, last_selftest: Optional[Dict[str, Any]]) -> None:
        super().__init__("Terrafuse: diagnostics", QgsTask.Flag.CanCancel)
        self.client = client
        self.models_dir = models_dir
        self.last_selftest = last_selftest
        self.report = ""

    def run(self) -> bool:
        backend, error = self.last_selftest, None
        if backend is None:
            try:
                backend = self.client.run("info", {}, timeout_s=INFO_TIMEOUT_S)
            except (JobFailed, WorkerError) as exc:
                error = str(exc)
        self.report = build_report(
            qgis_version=Qgis.QGIS_VERSION,
            python_path=self.client.python,
            gpu=query_gpus(),
            backend=backend,
            backend_error=error,
            models=model_folder_listing(Path(self.models_dir)),
            models_dir=self.models_dir,
            worker_errors=list(self.client.recent_errors),
        )
        return True

    def finished(self, ok: bool) -> None:
        self.reportReady.emit(self.report)


class DiagnosticsDialog(QDialog):
    def __init__(self, report: str, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Terrafuse diagnostics")
        self.resize(720, 560)
        self.text = QPlainTextEdit(report)
        self.text.setReadOnly(True)
        self.text.setFont(QFont("monospace"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy to clipboard")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.text.toPlainText())
