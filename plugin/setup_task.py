"""Set up backend: a QgsTask that makes the backend's own environment with the torch build for this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .runtime.environment import BackendEnvironment, InstallError, find_base_python, install_commands, run_install
from .runtime.gpu import query_gpus
from .runtime.torch_build import TorchBuild, build_for, choose_torch_build
from .tasks import LOG_TAG


def resolve_build(choice: str) -> TorchBuild:
    """The user's choice, or for "auto" the build nvidia-smi's report calls for."""
    if choice == "auto":
        return choose_torch_build(query_gpus())
    return build_for(choice)


class SetupBackendTask(QgsTask):
    """Creates (or completes) the environment at ``folder``; ``setupFinished(outcome)`` when done."""

    progressMessage = pyqtSignal(int, int, str, float)
    setupFinished = pyqtSignal(object)

    def __init__(self, folder: str, build: Optional[TorchBuild], requirements: Optional[Path] = None,
                 base_python: Optional[str] = None) -> None:
        super().__init__("Terrafuse: set up the backend", QgsTask.Flag.CanCancel)
        self.environment = BackendEnvironment(Path(folder))
        self.build = build
        self.requirements = requirements
        self.base_python = base_python
        self.outcome: Dict[str, Any] = {"status": "cancelled", "message": "Cancelled before it started"}

    def run(self) -> bool:
        try:
            base = self.base_python or find_base_python()
            kwargs = {"requirements": self.requirements} if self.requirements else {}
            commands = install_commands(self.environment, base, self.build, **kwargs)
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)  # QGIS's paths must not leak into the new environment
            env.pop("PYTHONHOME", None)
            run_install(commands, self._on_progress, self.isCanceled,
                        on_line=lambda line: QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info), env=env)
        except InstallError as exc:
            status = "cancelled" if self.isCanceled() else "error"
            self.outcome = {"status": status, "message": str(exc)}
            return False
        except OSError as exc:  # a folder that cannot be written, a disk full
            self.outcome = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
            return False
        label = self.build.label if self.build else "torch left as it is"
        self.outcome = {"status": "ok", "python": str(self.environment.python), "build": label}
        return True

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.setProgress(100.0 * done / total)
        self.progressMessage.emit(done, total, message, -1.0)

    def finished(self, ok: bool) -> None:
        if self.outcome["status"] == "error":
            QgsMessageLog.logMessage(self.outcome["message"], LOG_TAG, Qgis.MessageLevel.Critical)
        self.setupFinished.emit(self.outcome)
