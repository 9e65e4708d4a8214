"""Stops asked by signals: SIGTERM (what schedulers and service managers send) and SIGHUP (a closed
terminal) raise :class:`Stopped` in the main thread, where Ctrl-C's KeyboardInterrupt would be, so that
a stopped job cleans up exactly as an interrupted one: no temporary output left, its finished tiles
kept in its resume store."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """The job was stopped by the signal ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def install_stop_handlers(first: Callable[[], None] | None = None) -> None:
    """SIGTERM and SIGHUP raise :class:`Stopped` (main thread only, as Python requires), after calling
    ``first`` (the worker cancels its jobs there, whatever its main thread is doing)."""

    def stop(signum: int, frame: Any) -> None:
        if first is not None:
            first()
        raise Stopped(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


@contextmanager
def kept_signal_handlers() -> Iterator[None]:
    """Around a library call that installs its own handlers (``ray.init`` makes SIGTERM exit at once): the
    handlers in place before are put back afterwards. Outside the main thread nothing is touched."""
    try:
        before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    except ValueError:
        before = {}
    try:
        yield
    finally:
        for signum, handler in before.items():
            try:
                if handler is not None:
                    signal.signal(signum, handler)
            except ValueError:  # not the main thread
                break
