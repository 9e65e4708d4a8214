"""Jobs in QGIS's task manager: QGIS stays responsive, cancel works, a dead worker is reported."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from terrafuse_under_test.plugin.tasks import JobTask
from terrafuse_under_test.plugin.worker_client import WorkerClient

from tests.conftest import BACKEND_PYTHON

TIMEOUT_MS = 60_000


@pytest.fixture
def client() -> Iterator[WorkerClient]:
    worker = WorkerClient(BACKEND_PYTHON, env={"TERRAFUSE_JOB_MODULES": "tests.backend.slow_jobs"})
    yield worker
    worker.stop()


def start(task: JobTask, qtbot):
    blocker = qtbot.waitSignal(task.jobFinished, timeout=TIMEOUT_MS)
    QgsApplication.taskManager().addTask(task)
    return blocker


def test_the_ui_thread_keeps_running_while_a_job_runs(client, qtbot) -> None:
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    messages: list[tuple] = []
    task = JobTask(client, "test_count", {"steps": 20, "step_s": 0.05}, "count")
    task.progressMessage.connect(lambda *args: messages.append(args))
    with start(task, qtbot) as blocker:
        pass
    timer.stop()
    outcome = blocker.args[0]
    assert outcome["status"] == "ok"
    assert outcome["result"]["steps"] == 20
    assert len(ticks) >= 10, "the event loop stalled while the job ran"
    assert messages, "progress reached the UI thread"
    assert any(left_s >= 0 for *_, left_s in messages), "a time-left estimate was given"


def test_cancel_from_qgis(client, qtbot) -> None:
    task = JobTask(client, "test_count", {"steps": 1000, "step_s": 0.02}, "count")
    task.progressMessage.connect(lambda *args: task.cancel())
    with start(task, qtbot) as blocker:
        pass
    assert blocker.args[0]["status"] == "cancelled"
    follow_up = JobTask(client, "test_count", {"steps": 1, "step_s": 0}, "again")
    with start(follow_up, qtbot) as blocker:
        pass
    assert blocker.args[0]["status"] == "ok"


def test_a_dead_worker_is_reported_and_the_next_job_works(client, qtbot) -> None:
    task = JobTask(client, "test_count", {"steps": 1000, "step_s": 0.02}, "count")
    killed: list[int] = []

    def kill(*_args) -> None:
        if not killed:
            killed.append(client.pid)
            os.kill(client.pid, signal.SIGKILL)

    task.progressMessage.connect(kill)
    with start(task, qtbot) as blocker:
        pass
    outcome = blocker.args[0]
    assert outcome["status"] == "error"
    assert outcome["error_type"] == "WorkerDied"
    assert "restarted for the next job" in outcome["message"]
    follow_up = JobTask(client, "test_count", {"steps": 1, "step_s": 0}, "again")
    with start(follow_up, qtbot) as blocker:
        pass
    assert blocker.args[0]["status"] == "ok"
    assert blocker.args[0]["result"]["pid"] != killed[0]
