"""A QgsTask around one backend job: the waiting happens in QGIS's task manager thread."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .job_progress import JobProgress, ProgressState
from .worker_client import JobCancelled, JobFailed, WorkerClient, WorkerError

LOG_TAG = "Terrafuse"


class PreparationError(Exception):
    """What ``prepare`` raises for a problem the user can fix."""


class JobTask(QgsTask):
    """Runs ``job`` in the worker; emits ``progressMessage`` and, once done, ``jobFinished``.

    ``jobFinished(outcome)`` carries a dict: ``status`` ("ok", "error", "cancelled"), ``result``
    or ``message``, and ``user_error``. It is emitted from :meth:`finished`, in the UI thread.
    """

    progressMessage = pyqtSignal(int, int, str, float)  # done, total, message, seconds left (-1: unknown)
    progressChanged = pyqtSignal(object)  # a ProgressState: phase, its count, time left, device, percent
    jobFinished = pyqtSignal(object)

    def __init__(self, client: WorkerClient, job: str, params: Dict[str, Any], description: str,
                 prepare: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> None:
        """``prepare`` runs in the task's thread first (exporting a web layer, say) and returns the params."""
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.client = client
        self.job = job
        self.params = params
        self.prepare = prepare
        self.outcome: Dict[str, Any] = {"status": "error", "message": "not run", "user_error": False}
        self._started_s: Optional[float] = None
        self.tracker = JobProgress()

    def run(self) -> bool:
        self._started_s = time.monotonic()
        try:
            if self.prepare is not None:
                self._on_event({"type": "progress", "done": 0, "total": 0, "phase": "exporting",
                                "message": "exporting the layer over the area"})
                self.params = self.prepare(self.params)
            if self.isCanceled():
                raise JobCancelled("Cancelled")
            handle = self.client.submit(self.job, self.params)
            result = handle.wait(is_cancelled=self.isCanceled, on_event=self._on_event)
        except JobCancelled as exc:
            self.outcome = {"status": "cancelled", "message": str(exc), "user_error": True}
            return False
        except JobFailed as exc:
            self.outcome = {"status": "error", "message": str(exc), "error_type": exc.error_type,
                            "user_error": exc.user_error}
            return False
        except PreparationError as exc:
            self.outcome = {"status": "error", "message": str(exc), "error_type": type(exc).__name__,
                            "user_error": True}
            return False
        except WorkerError as exc:  # includes WorkerDied
            self.outcome = {"status": "error", "message": str(exc), "error_type": type(exc).__name__,
                            "user_error": False}
            return False
        self.outcome = {"status": "ok", "result": result, "elapsed_s": time.monotonic() - self._started_s}
        return True

    def _on_event(self, event: Dict[str, Any]) -> None:
        state: Optional[ProgressState] = self.tracker.event(event)
        if state is None:  # "started": the device is known before any step
            state = ProgressState(0, "", None, None, None, self.tracker.device, "starting")
        self.setProgress(float(state.percent))
        left_s = -1.0 if state.left_s is None else state.left_s
        self.progressMessage.emit(int(event.get("done", 0)), int(event.get("total", 0)), state.message, left_s)
        self.progressChanged.emit(state)

    def finished(self, ok: bool) -> None:
        if self._started_s is None:  # cancelled while still queued: run() never ran
            self.outcome = {"status": "cancelled", "message": "Cancelled before it started", "user_error": True}
        if not ok and self.outcome["status"] == "error":
            level = Qgis.MessageLevel.Warning if self.outcome.get("user_error") else Qgis.MessageLevel.Critical
            QgsMessageLog.logMessage(f"{self.job}: {self.outcome['message']}", LOG_TAG, level)
        self.jobFinished.emit(self.outcome)
