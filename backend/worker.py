"""The worker's message loop: reads requests from stdin, runs jobs one at a time, writes events.

The plugin starts ``python -m backend.worker`` with an interpreter the user chose and keeps it
running between jobs, so models stay loaded. Jobs run in one background thread while the main
thread keeps reading stdin, which is how a cancel reaches a running job.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import traceback
from typing import IO, Any

from . import __version__, jobs
from .errors import JobCancelled, UserError, user_message
from .output_folder import claimed_outputs
from .progress import Progress
from .protocol import PROTOCOL_VERSION, ProtocolError, decode_request, encode
from .stop_signals import Stopped, install_stop_handlers

log = logging.getLogger("terrafuse.worker")


def run_job(name: str, raw_params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Resolve, validate and run one job; the single entry point of the CLI and the worker."""
    spec = jobs.get(name)
    params = spec.bind(raw_params)
    with claimed_outputs(spec.name, {p.name: p.kind for p in spec.params}, params):
        return spec.resolve()(params, progress)


class Worker:
    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._progress: dict[str, Progress] = {}
        self._progress_lock = threading.RLock()  # re-entered by the stop handler in the main thread
        self._runner = threading.Thread(target=self._run_loop, name="terrafuse-job", daemon=True)
        self._device = ""  # the device line every "started" event carries, read once (it imports torch)
        self._device_reader = threading.Thread(target=self._read_device, name="terrafuse-device", daemon=True)

    def send(self, message: dict[str, Any]) -> None:
        with self._write_lock:
            self._out.write(encode(message))
            self._out.flush()

    def _read_device(self) -> None:
        from .jobs.info import device_line

        try:
            self._device = device_line()
        except Exception as exc:  # noqa: BLE001 - a broken torch must not stop the worker; the job will say why
            log.warning("cannot read the device: %s", exc)

    def serve(self, lines: IO[str]) -> None:
        self._device_reader.start()  # while the plugin sends its first job
        self._runner.start()
        self.send({"type": "ready", "version": __version__, "protocol": PROTOCOL_VERSION,
                   "pid": os.getpid(), "python": sys.executable})
        try:
            self._read_requests(lines)
        except Stopped as exc:  # SIGTERM or SIGHUP: stop as a cancel does (finished tiles kept)
            log.info("stopped by %s: cancelling the running job", exc)
        # stdin closed, shutdown or a stop signal: cancel whatever runs, let the runner finish its event.
        with self._progress_lock:
            for progress in self._progress.values():
                progress.cancel()
        self._queue.put(None)
        self._runner.join(timeout=10)

    def cancel_all(self) -> None:
        """Cancel every job (a stop signal: called from the handler itself, before the read loop ends)."""
        with self._progress_lock:
            for progress in self._progress.values():
                progress.cancel()

    def _read_requests(self, lines: IO[str]) -> None:
        for line in lines:
            if not line.strip():
                continue
            try:
                request = decode_request(line)
            except ProtocolError as exc:
                self.send({"type": "error", "id": None, "error_type": "ProtocolError",
                           "message": f"Malformed request: {exc}", "user_error": False})
                continue
            kind = request["type"]
            if kind == "shutdown":
                return
            if kind == "describe":
                self.send({"type": "jobs", "jobs": [spec.to_json() for spec in jobs.JOBS.values()]})
            elif kind == "cancel":
                self._cancel(request["id"])
            elif kind == "run":
                with self._progress_lock:
                    self._progress[request["id"]] = self._make_progress(request["id"])
                self._queue.put(request)

    def _make_progress(self, job_id: str) -> Progress:
        def emit(done: int, total: int, message: str) -> None:
            self.send({"type": "progress", "id": job_id, "done": done, "total": total, "message": message,
                       "phase": progress.phase})

        progress = Progress(emit)
        return progress

    def _cancel(self, job_id: str) -> None:
        with self._progress_lock:
            progress = self._progress.get(job_id)
        if progress is not None:
            progress.cancel()

    def _run_loop(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            job_id = request["id"]
            with self._progress_lock:
                progress = self._progress[job_id]
            self._run_one(job_id, request["job"], request.get("params", {}), progress)
            with self._progress_lock:
                self._progress.pop(job_id, None)

    def _run_one(self, job_id: str, job: str, params: dict[str, Any], progress: Progress) -> None:
        try:
            progress.check()
            self._device_reader.join()
            self.send({"type": "started", "id": job_id, "job": job, "device": self._device})
            result = run_job(job, params, progress)
        except JobCancelled as exc:
            self.send({"type": "cancelled", "id": job_id, "message": str(exc)})
        except UserError as exc:
            log.info("job %s (%s) refused: %s", job_id, job, exc)
            self.send({"type": "error", "id": job_id, "error_type": "UserError",
                       "message": str(exc), "user_error": True})
        except Exception as exc:  # noqa: BLE001 - any failure must become an event, the loop lives on
            message = user_message(exc)
            if message is not None:  # a full disk, a read-only folder, a missing file: one line for the user
                log.info("job %s (%s) failed:\n%s", job_id, job, traceback.format_exc())
                self.send({"type": "error", "id": job_id, "error_type": "UserError", "message": message,
                           "user_error": True})
                return
            log.error("job %s (%s) failed:\n%s", job_id, job, traceback.format_exc())
            self.send({"type": "error", "id": job_id, "error_type": type(exc).__name__,
                       "message": str(exc) or type(exc).__name__, "user_error": False})
        else:
            self.send({"type": "result", "id": job_id, "result": result})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__)
    parser.add_argument("--jobs-module", action="append", default=[],
                        help="import a module that registers further jobs (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = args.jobs_module + [m for m in os.environ.get("TERRAFUSE_JOB_MODULES", "").split(",") if m]
    jobs.load_extra(extra)
    # Whatever a library prints, from Python or from C, must not corrupt the protocol: the
    # protocol keeps a duplicate of descriptor 1, and descriptor 1 itself now points at stderr.
    sys.stdout.flush()
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(protocol_out)
    install_stop_handlers(worker.cancel_all)
    worker.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
