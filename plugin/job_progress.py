"""A job's progress as the dock tells it: by phase, each with its own count, the time left from the current
phase's measured rate (after a warm-up, never while the model loads), the device from the job's first event,
and an overall percentage that never goes backwards within a job.

Pure Python: fed the worker's "started" and "progress" events (whose ``phase`` and ``device`` are optional:
an older worker's events get their phase from the message).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..backend.progress import phase_count, phase_of

#: What the status line calls each phase.
PHASE_LABELS = {
    "loading": "Loading the model",
    "features": "Features",
    "epochs": "Epochs",
    "validating": "Validating",
    "writing": "Writing",
    "tiles": "Tiles",
    "reading": "Reading",
    "exporting": "Exporting the layer",
}
#: Phases whose rate says nothing about the time left (one slow step of unknown length).
UNTIMED_PHASES = ("loading", "validating", "writing", "exporting")
#: Steps of a phase left out of its rate (the first ones pay for caches, compilation, memory).
WARM_UP_STEPS = 1
#: Least measured time before a rate is trusted.
MIN_MEASURED_S = 0.5


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1.0, seconds):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class ProgressState:
    """What the dock shows for one progress event."""

    percent: int  # overall, 0-100, never lower than the previous state of the job
    phase: str
    phase_done: Optional[int]
    phase_total: Optional[int]
    left_s: Optional[float]  # seconds left in the current phase; None until measured
    device: str
    message: str

    @property
    def phase_label(self) -> str:
        return PHASE_LABELS.get(self.phase, self.message[:1].upper() + self.message[1:])

    def status_line(self) -> str:
        """``Epochs 12 of 40, about 30 s left`` (the device goes on a line of its own)."""
        text = self.phase_label
        if self.phase_total:
            count = f"{self.phase_done} of {self.phase_total}"
            text += f" {count}" if self.phase in PHASE_LABELS else f" ({count})"
        if self.left_s is not None:
            text += f", about {duration_text(self.left_s)} left"
        return text


class JobProgress:
    """Turns one job's events into :class:`ProgressState`; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.device = ""
        self._fraction = 0.0  # overall, never decreasing
        self._base = 0.0  # where the current run of steps starts (a preview after training starts a new run)
        self._total: Optional[int] = None
        self._done = 0
        self._phase = ""
        self._samples: List[Tuple[float, int]] = []  # (time, count) of the current phase

    def started(self, event: Dict[str, Any]) -> None:
        self.device = str(event.get("device") or self.device)

    def event(self, event: Dict[str, Any]) -> Optional[ProgressState]:
        """A worker event: "started" sets the device, "progress" gives a state."""
        if event.get("type") == "started":
            self.started(event)
            return None
        return self.update(int(event.get("done", 0)), int(event.get("total", 0)), str(event.get("message", "")),
                           event.get("phase"))

    def update(self, done: int, total: int, message: str, phase: Optional[str] = None) -> ProgressState:
        phase = phase if phase is not None else phase_of(message)
        phase = phase or self._phase  # "done" and the like belong to the phase they end
        if total > 0:
            if self._total is not None and (total != self._total or done < self._done):
                self._base = self._fraction  # a new run of steps: it fills what is left of the bar
            self._total, self._done = total, done
            self._fraction = max(self._fraction, self._base + (1.0 - self._base) * min(1.0, done / total))
        if phase != self._phase:
            self._phase, self._samples = phase, []
        count = phase_count(message)  # the job's overall steps mix phases: only the message counts one...
        if count is None and phase == "" and total > 0:
            count = (done, total)  # ...unless the job names no phase at all: its steps are one run
        left_s = self._left_s(count) if count is not None else None
        return ProgressState(percent=int(100 * self._fraction), phase=phase,
                             phase_done=count[0] if count else None, phase_total=count[1] if count else None,
                             left_s=left_s, device=self.device, message=message)

    def _left_s(self, count: Tuple[int, int]) -> Optional[float]:
        if self._phase in UNTIMED_PHASES or count[0] >= count[1]:
            return None
        now = self._clock()
        if not self._samples or self._samples[-1][1] != count[0]:
            self._samples.append((now, count[0]))
        measured = self._samples[WARM_UP_STEPS:]
        if len(measured) < 2:
            return None
        (t0, c0), (t1, c1) = measured[0], measured[-1]
        if t1 - t0 < MIN_MEASURED_S or c1 <= c0:
            return None
        rate = (c1 - c0) / (t1 - t0)
        return max(0.0, (count[1] - count[0]) / rate)
