"""The worker protocol end to end: the plugin's client against a real worker process.

Every failure gets a clear error and the next job still works.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from terrafuse_under_test.plugin.worker_client import (
    JobCancelled,
    JobFailed,
    WorkerClient,
    WorkerDied,
    WorkerError,
)

from tests.conftest import BACKEND_PYTHON, SAMPLE_SCENE


@pytest.fixture
def client() -> Iterator[WorkerClient]:
    lines: list[str] = []
    worker = WorkerClient(BACKEND_PYTHON, on_log=lines.append,
                          env={"TERRAFUSE_JOB_MODULES": "tests.backend.slow_jobs"})
    worker.log_lines = lines  # type: ignore[attr-defined]
    yield worker
    worker.stop()


def test_a_job_runs_and_reports_progress(client: WorkerClient) -> None:
    seen: list[tuple[int, int, str]] = []
    result = client.run("test_count", {"steps": 3, "step_s": 0.01}, on_progress=lambda *a: seen.append(a))
    assert result["steps"] == 3
    assert seen[-1] == (3, 3, "done")


def test_the_worker_stays_up_between_jobs(client: WorkerClient) -> None:
    first = client.run("test_count", {"steps": 1, "step_s": 0})
    second = client.run("inspect", {"image": str(SAMPLE_SCENE)})
    third = client.run("test_count", {"steps": 1, "step_s": 0})
    assert first["pid"] == third["pid"] == client.pid
    assert second["count"] == 4


def test_a_malformed_line_is_answered_and_the_next_job_works(client: WorkerClient) -> None:
    client.ensure_started()
    client.send_raw("this is not json")
    client.send_raw('{"type": "run", "job": "info"}')  # no id
    deadline = time.monotonic() + 10
    while len(client.protocol_errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Malformed request: not JSON" in client.protocol_errors[0]
    assert "needs a string 'id'" in client.protocol_errors[1]
    assert client.run("test_count", {"steps": 1, "step_s": 0})["steps"] == 1


def test_an_unknown_job_is_a_user_error(client: WorkerClient) -> None:
    with pytest.raises(JobFailed, match="Unknown job 'segment_the_moon'") as caught:
        client.run("segment_the_moon", {})
    assert caught.value.user_error
    assert client.run("test_count", {"steps": 1, "step_s": 0})["steps"] == 1


def test_bad_parameters_are_user_errors(client: WorkerClient) -> None:
    with pytest.raises(JobFailed, match="needs the parameter 'image'"):
        client.run("inspect", {})
    with pytest.raises(JobFailed, match="has no parameter colour"):
        client.run("inspect", {"image": str(SAMPLE_SCENE), "colour": "red"})
    with pytest.raises(JobFailed, match="expects int"):
        client.run("test_count", {"steps": "many"})


def test_an_internal_error_keeps_its_traceback_in_the_log(client: WorkerClient) -> None:
    with pytest.raises(JobFailed, match="boom at step 2") as caught:
        client.run("test_count", {"steps": 5, "step_s": 0, "fail_at": 2})
    assert caught.value.error_type == "RuntimeError"
    assert not caught.value.user_error
    # The worker's stderr is read by a thread of its own: the traceback may land just after the error message.
    deadline = time.monotonic() + 10
    while "slow_jobs.py" not in "\n".join(client.log_lines) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    log = "\n".join(client.log_lines)  # type: ignore[attr-defined]
    assert "Traceback (most recent call last)" in log
    assert "slow_jobs.py" in log
    assert client.run("test_count", {"steps": 1, "step_s": 0})["steps"] == 1


def test_a_user_error_has_no_traceback(client: WorkerClient, tmp_path) -> None:
    not_a_vector = tmp_path / "area.gpkg"
    not_a_vector.write_text("garbage")
    with pytest.raises(JobFailed, match="Cannot read the area file") as caught:
        client.run("inspect", {"image": str(SAMPLE_SCENE), "aoi": str(not_a_vector)})
    assert caught.value.user_error
    assert "Traceback" not in "\n".join(client.log_lines)  # type: ignore[attr-defined]


def test_cancel_stops_a_running_job_and_the_next_job_works(client: WorkerClient) -> None:
    handle = client.submit("test_count", {"steps": 1000, "step_s": 0.02})
    started = time.monotonic()
    progressed: list[int] = []

    def cancel_after_first_step() -> bool:
        return bool(progressed)

    with pytest.raises(JobCancelled):
        handle.wait(on_progress=lambda done, total, message: progressed.append(done),
                    is_cancelled=cancel_after_first_step)
    assert time.monotonic() - started < 5
    assert client.run("test_count", {"steps": 2, "step_s": 0})["steps"] == 2


def test_a_worker_killed_mid_job_is_reported_and_restarted(client: WorkerClient) -> None:
    handle = client.submit("test_count", {"steps": 1000, "step_s": 0.02})
    first_pid = client.pid
    killed: list[bool] = []

    def kill_once(done: int, total: int, message: str) -> None:
        if not killed:
            killed.append(True)
            os.kill(first_pid, signal.SIGKILL)

    with pytest.raises(WorkerDied, match=r"killed \(signal 9\) during job 'test_count'"):
        handle.wait(on_progress=kill_once)
    assert client.last_exit is not None
    result = client.run("test_count", {"steps": 1, "step_s": 0})
    assert result["pid"] != first_pid


def test_a_missing_interpreter_is_a_clear_error(tmp_path) -> None:
    client = WorkerClient(str(tmp_path / "no-such-python"))
    with pytest.raises(WorkerError, match="Cannot start the backend"):
        client.run("info", {})


def test_an_interpreter_without_the_backend_says_why(tmp_path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 3\n")
    fake.chmod(0o755)
    client = WorkerClient(str(fake))
    with pytest.raises(WorkerError, match="did not start:\nNo module named torch"):
        client.run("info", {})


def test_jobs_are_described_with_their_schema(client: WorkerClient) -> None:
    client.ensure_started()
    client.send_raw('{"type": "describe"}')
    deadline = time.monotonic() + 10
    while not client.job_schemas and time.monotonic() < deadline:
        time.sleep(0.05)
    by_name = {job["name"]: job for job in client.job_schemas}
    assert {"info", "inspect", "test_count"} <= set(by_name)
    image = by_name["inspect"]["params"][0]
    assert (image["name"], image["kind"], image["required"]) == ("image", "raster", True)


def test_every_job_starts_with_the_device_and_its_steps_carry_their_phase(client: WorkerClient) -> None:
    for _ in range(2):  # every job, not only the first
        events: list[dict] = []
        client.run("inspect", {"image": str(SAMPLE_SCENE)}, on_event=events.append)
        assert events[0]["type"] == "started"
        assert events[0]["device"].startswith(("CPU: ", "GPU: ")), events[0]
        progress = [e for e in events if e["type"] == "progress"]
        assert progress
        assert all("phase" in e for e in progress)
        assert {e["phase"] for e in progress} >= {"reading"}
