"""Starts the backend worker, sends it jobs and reads its events.

Pure Python (no Qt): the waiting happens in whatever thread calls :meth:`JobHandle.wait` (a
QgsTask or a Processing algorithm), never in QGIS's UI thread. The worker is a separate process
started with an interpreter the user chose, so a crash in a model never takes QGIS down; a worker
that dies is restarted for the next job, and the reason is kept for the dock to show.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue

# The worker is started without a shell, from an argument list.
import subprocess  # nosec B404
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from ..backend.protocol import ProtocolError, decode, encode

LogCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int, str], None]

#: Root of the plugin folder: the worker runs ``-m backend.worker`` from here.
PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 40


class WorkerError(Exception):
    """The worker could not be started or stopped answering."""


class WorkerDied(WorkerError):
    """The worker process ended while a job was running."""


class JobFailed(Exception):
    """A job ended with an error event; ``user_error`` tells whether the user can fix it."""

    def __init__(self, error_type: str, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.user_error = user_error


class JobCancelled(Exception):
    """The job was cancelled before it finished."""


class JobHandle:
    """One submitted job: its events arrive in a queue filled by the client's reader thread."""

    def __init__(self, client: WorkerClient, job_id: str, job: str) -> None:
        self.client = client
        self.id = job_id
        self.job = job
        self.events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self.process: Optional[subprocess.Popen[str]] = None  # the worker that runs it

    def cancel(self) -> None:
        self.client.cancel(self.id)

    def wait(
        self,
        on_progress: Optional[ProgressCallback] = None,
        is_cancelled: Optional[Callable[[], bool]] = None,
        poll_s: float = 0.1,
        timeout_s: Optional[float] = None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> Dict[str, Any]:
        """Block until the job ends; return its result or raise JobFailed, JobCancelled or WorkerDied.

        ``on_event`` gets the whole "started" and "progress" events (their optional device and phase).

        ``is_cancelled`` is polled (a QgsTask's isCanceled, a Processing feedback's isCanceled);
        when it turns true the worker is asked to cancel, and the job's own answer ends the wait.
        """
        cancel_sent = False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if not cancel_sent and is_cancelled is not None and is_cancelled():
                self.cancel()
                cancel_sent = True
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise WorkerError(f"Job '{self.job}' did not finish within {timeout_s:.0f} s")
            try:
                event = self.events.get(timeout=poll_s)
            except queue.Empty:
                continue
            kind = event["type"]
            if kind in ("started", "progress") and on_event is not None:
                on_event(event)
            if kind == "progress" and on_progress is not None:
                on_progress(int(event.get("done", 0)), int(event.get("total", 0)), str(event.get("message", "")))
            elif kind == "result":
                return event.get("result") or {}
            elif kind == "error":
                raise JobFailed(event.get("error_type", "Error"), event.get("message", ""),
                                bool(event.get("user_error")))
            elif kind == "cancelled":
                raise JobCancelled(event.get("message") or "Cancelled")
            elif kind == "worker_died":
                raise WorkerDied(event["message"])


class WorkerClient:
    """Owns one worker process; thread-safe submit, cancel and restart."""

    def __init__(
        self,
        python: str,
        on_log: Optional[LogCallback] = None,
        extra_args: tuple[str, ...] = (),
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.python = python
        self.on_log = on_log
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.last_exit: Optional[str] = None  # why the previous worker ended, for the dock
        self.protocol_errors: List[str] = []
        self.job_schemas: List[Dict[str, Any]] = []  # filled by a "describe" request
        self.recent_errors: Deque[str] = deque(maxlen=50)  # for the diagnostics report
        self._process: Optional[subprocess.Popen[str]] = None
        self._handles: Dict[str, JobHandle] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._ready_info: Dict[str, Any] = {}
        self._stderr_tail: Deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    # -- life cycle -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self.alive and self._process else None

    def set_env(self, name: str, value: str) -> None:
        """Give the worker ``name=value``; a running worker is stopped so that the next job starts one with it."""
        with self._lock:
            if self.extra_env.get(name) == value:
                return
            self.extra_env[name] = value
        self.stop()

    def ensure_started(self) -> None:
        with self._lock:
            if self.alive:
                return
            if self._process is not None:
                self._process = None  # the reader thread has reported the death already
            self._start()

    def _start(self) -> None:
        env = dict(os.environ)
        env.update(self.extra_env)
        # Only the plugin folder: QGIS's own PYTHONPATH would shadow the worker's numpy and friends.
        env["PYTHONPATH"] = PLUGIN_ROOT
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONHOME", None)  # QGIS's own Python home must not leak into another interpreter
        args = [self.python, "-m", "backend.worker", *self.extra_args]
        self._ready.clear()
        self._stderr_tail.clear()
        try:
            # An argument list and no shell; the interpreter is the user's own choice.
            process = subprocess.Popen(  # nosec B603
                args, cwd=PLUGIN_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        except OSError as exc:
            raise WorkerError(
                f"Cannot start the backend with '{self.python}': {exc}. Set the backend's Python in "
                "Terrafuse's settings."
            ) from None
        self._process = process
        threading.Thread(target=self._read_stdout, args=(process,), daemon=True, name="terrafuse-stdout").start()
        stderr_reader = threading.Thread(target=self._read_stderr, args=(process,), daemon=True,
                                         name="terrafuse-stderr")
        stderr_reader.start()
        if not self._ready.wait(START_TIMEOUT_S) or process.poll() is not None:
            self._kill(process)
            stderr_reader.join(timeout=5)  # the reason is in the last lines it wrote: read them all first
            tail = "\n".join(self._stderr_tail) or "(no output)"
            raise WorkerError(f"The backend at '{self.python}' did not start:\n{tail}")

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.stdin.write(encode({"type": "shutdown"}))
            process.stdin.flush()
            process.stdin.close()
            process.wait(timeout=timeout_s)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._kill(process)

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    @property
    def ready_info(self) -> Dict[str, Any]:
        """The worker's ready event: version, pid, interpreter."""
        return dict(self._ready_info)

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, job: str, params: Optional[Dict[str, Any]] = None) -> JobHandle:
        with self._lock:
            self.ensure_started()
            job_id = f"j{next(self._ids)}"
            handle = JobHandle(self, job_id, job)
            handle.process = self._process
            self._handles[job_id] = handle
            self._send({"type": "run", "id": job_id, "job": job, "params": params or {}})
        return handle

    def run(self, job: str, params: Optional[Dict[str, Any]] = None, **wait_kwargs: Any) -> Dict[str, Any]:
        """Submit and wait: for scripts and tests."""
        return self.submit(job, params).wait(**wait_kwargs)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            if self.alive:
                self._send({"type": "cancel", "id": job_id})

    def send_raw(self, line: str) -> None:
        """Write a raw line to the worker (tests of the protocol's error handling)."""
        with self._lock:
            self.ensure_started()
            self._write(line if line.endswith("\n") else line + "\n")

    def _send(self, message: Dict[str, Any]) -> None:
        self._write(encode(message))

    def _write(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise WorkerDied("The backend is not running")
        try:
            process.stdin.write(line)
            process.stdin.flush()
        except (OSError, ValueError) as exc:
            raise WorkerDied(f"The backend stopped while a job was being sent: {exc}") from None

    # -- reader threads ---------------------------------------------------------------------
    def _read_stdout(self, process: subprocess.Popen[str]) -> None:
        for line in process.stdout or ():
            try:
                event = decode(line)
            except ProtocolError as exc:
                self._log(f"unreadable line from the worker ({exc}): {line.strip()[:200]}")
                continue
            if event["type"] == "jobs":
                self.job_schemas = event.get("jobs", [])
                continue
            if event["type"] == "ready":
                self._ready_info = event
                self._ready.set()
                continue
            job_id = event.get("id")
            with self._lock:
                handle = self._handles.get(job_id) if job_id else None
                if event["type"] in ("result", "error", "cancelled") and job_id:
                    self._handles.pop(job_id, None)
            if event["type"] == "error":
                self.recent_errors.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                                          f"{event.get('error_type')}: {event.get('message')}")
            if handle is not None:
                handle.events.put(event)
            elif event["type"] == "error":
                self.protocol_errors.append(event.get("message", ""))
                self._log(f"worker: {event.get('message')}")
        if process.stdout is not None:
            process.stdout.close()
        self._on_exit(process)

    def _read_stderr(self, process: subprocess.Popen[str]) -> None:
        for line in process.stderr or ():
            line = line.rstrip("\n")
            self._stderr_tail.append(line)
            self._log(line)
        if process.stderr is not None:
            process.stderr.close()

    def _on_exit(self, process: subprocess.Popen[str]) -> None:
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._ready.set()  # wake a start that waits for a ready line that will never come
        with self._lock:
            if self._process is process:
                self._process = None
            # Only this worker's jobs: a worker stopped on purpose (set_env, another interpreter) may end
            # after its successor took a job.
            orphans = [h for h in self._handles.values() if h.process is process or h.process is None]
            self._handles = {k: h for k, h in self._handles.items() if h not in orphans}
        tail = "\n".join(list(self._stderr_tail)[-5:])
        reason = f"The backend worker stopped (exit code {code})"
        if code is not None and code < 0:
            reason = f"The backend worker was killed (signal {-code})"
        self.last_exit = reason if (orphans or code not in (0, None)) else None
        if self.last_exit:
            self.recent_errors.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {reason}" + (f"\n{tail}" if tail else ""))
        for handle in orphans:
            handle.events.put({"type": "worker_died", "id": handle.id,
                               "message": f"{reason} during job '{handle.job}'; it is restarted for the next job."
                               + (f"\n{tail}" if tail else "")})

    def _log(self, message: str) -> None:
        if self.on_log is not None:
            self.on_log(message)


def default_python() -> str:
    """The backend interpreter when the user has set none: the project's .venv, else python3."""
    override = os.environ.get("TERRAFUSE_PYTHON")
    if override:
        return override
    candidates = [
        os.path.join(PLUGIN_ROOT, ".venv", "bin", "python"),
        os.path.join(PLUGIN_ROOT, ".venv", "Scripts", "python.exe"),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return "python" if sys.platform == "win32" else "python3"
