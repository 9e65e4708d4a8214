"""Exceptions a job raises on purpose; anything else is an internal error with a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing file); its message is shown as is."""


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is set."""

    def __init__(self, message: str = "Cancelled by the user") -> None:
        super().__init__(message)
