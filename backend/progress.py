"""Progress and cancellation: one small object handed down through a job, never a global.

Each update belongs to a *phase* (loading the model, features, epochs, tiles, writing...), so that a front
can count each phase on its own and estimate the time left from the current phase's rate only, never from
the seconds spent loading a model. A job may name the phase; otherwise it is read from the message.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

from .errors import JobCancelled

ProgressCallback = Callable[[int, int, str], None]

#: (phase, words of a message that mean it), first match wins; the phases a front counts apart.
PHASE_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loading", ("loading", "reading the labels", "reading versions")),
    ("features", ("features",)),
    ("epochs", ("epoch", "pretraining step", "prototype learning")),
    ("validating", ("validating", "baseline")),
    ("writing", ("writing", "saving")),
    ("tiles", ("tile",)),
    ("reading", ("reading", "hashing", "extracting", "converting", "band ")),
)
#: "tile 3 of 10", "epoch 5 of 40", "12 of 64 tiles": the count inside the phase.
_COUNT = re.compile(r"(\d+)\s+of\s+(\d+)")


def phase_of(message: str) -> str:
    """The phase a progress message belongs to ("" when none is recognised)."""
    text = message.lower()
    for phase, words in PHASE_WORDS:
        if any(word in text for word in words):
            return phase
    return ""


def phase_count(message: str) -> tuple[int, int] | None:
    """The (done, total) a message states for its phase, e.g. ``epoch 5 of 40``; None when it states none."""
    match = _COUNT.search(message)
    return (int(match.group(1)), int(match.group(2))) if match else None


class Progress:
    """Reports ``done`` of ``total`` steps and raises :class:`JobCancelled` once cancelled.

    ``emit`` receives every update; a job calls :meth:`update` (which also checks the cancel
    flag) at each step, and :meth:`check` in long loops that do not advance. :attr:`phase` is the
    phase of the last update, for an ``emit`` that reports it.
    """

    def __init__(self, emit: ProgressCallback | None = None, min_interval_s: float = 0.1) -> None:
        self._emit = emit
        self._cancel = threading.Event()
        self._min_interval_s = min_interval_s
        self._last_emit_s = 0.0
        self.phase = ""
        self._step = (0, 0)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def update(self, done: int, total: int, message: str = "", phase: str | None = None) -> None:
        """Report a step; updates closer than ``min_interval_s`` are dropped unless it is the last or the
        first of a new phase."""
        self.check()
        phase = phase if phase is not None else phase_of(message)
        new_phase = phase != self.phase
        self.phase = phase
        self._step = (done, total)
        now = time.monotonic()
        if self._emit is not None and (done >= total or new_phase or now - self._last_emit_s >= self._min_interval_s):
            self._last_emit_s = now
            self._emit(done, total, message)

    def say(self, message: str) -> None:
        """Report what the job waits for, at the last step reported (always emitted; checks the cancel)."""
        self.check()
        if self._emit is not None:
            self._last_emit_s = time.monotonic()
            self._emit(*self._step, message)
