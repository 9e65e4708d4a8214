"""SIGTERM and SIGHUP stop as Ctrl-C does: in the worker, a stop cancels the running job (its clean-up runs)
and the worker exits; a library that installs its own handler (ray.init) does not keep it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from backend.stop_signals import Stopped, install_stop_handlers, kept_signal_handlers
from tests.conftest import BACKEND_PYTHON, ROOT


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_worker_cancels_its_job_and_exits(signum: int) -> None:
    worker = subprocess.Popen([BACKEND_PYTHON, "-m", "backend.worker", "--jobs-module", "tests.backend.slow_jobs"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env={**os.environ})
    assert worker.stdin is not None
    assert worker.stdout is not None
    assert json.loads(worker.stdout.readline())["type"] == "ready"
    worker.stdin.write(json.dumps({"type": "run", "id": "j1", "job": "test_count",
                                   "params": {"steps": 10000, "step_s": 0.01}}) + "\n")
    worker.stdin.flush()
    while json.loads(worker.stdout.readline())["type"] != "progress":
        pass
    watchdog = threading.Timer(60, worker.kill)  # a worker that ignores the stop fails the test, never hangs it
    watchdog.start()
    try:
        worker.send_signal(signum)
        events = [json.loads(line) for line in worker.stdout]
        assert worker.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
    assert events[-1]["type"] == "cancelled"
    assert events[-1]["id"] == "j1"


def test_handlers_installed_by_a_library_are_put_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        install_stop_handlers()
        with kept_signal_handlers():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does
        with pytest.raises(Stopped) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.value.signum == signal.SIGTERM
        assert isinstance(stopped.value, KeyboardInterrupt)  # the same clean-up as Ctrl-C
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
