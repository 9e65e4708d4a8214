"""Progress and cancellation: one small object handed down through a job, never a global."""

from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import JobCancelled

ProgressCallback = Callable[[int, int, str], None]


class Progress:
    """Reports ``done`` of ``total`` steps and raises :class:`JobCancelled` once cancelled.

    ``emit`` receives every update; a job calls :meth:`update` (which also checks the cancel
    flag) at each step, and :meth:`check` in long loops that do not advance.
    """

    def __init__(self, emit: ProgressCallback | None = None, min_interval_s: float = 0.1) -> None:
        self._emit = emit
        self._cancel = threading.Event()
        self._min_interval_s = min_interval_s
        self._last_emit_s = 0.0
        self._step = (0, 0)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def update(self, done: int, total: int, message: str = "") -> None:
        """Report a step; updates closer than ``min_interval_s`` are dropped unless it is the last."""
        self.check()
        self._step = (done, total)
        now = time.monotonic()
        if self._emit is not None and (done >= total or now - self._last_emit_s >= self._min_interval_s):
            self._last_emit_s = now
            self._emit(done, total, message)

    def say(self, message: str) -> None:
        """Report what the job waits for, at the last step reported (always emitted; checks the cancel)."""
        self.check()
        if self._emit is not None:
            self._last_emit_s = time.monotonic()
            self._emit(*self._step, message)
