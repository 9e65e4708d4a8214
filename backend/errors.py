"""Exceptions a job raises on purpose; anything else is an internal error with a traceback."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix (bad input, missing file); its message is shown as is."""


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is set."""

    def __init__(self, message: str = "Cancelled by the user") -> None:
        super().__init__(message)


#: What the operating system (or GDAL and SQLite, in their words) says when a failure is the user's to fix,
#: and the advice that goes with it.
_OS_FAILURES = (
    (errno.ENOSPC, "No space left on device", "the disk is full; free some space or choose another output folder"),
    (errno.EDQUOT, "Disk quota exceeded", "the disk quota is used up; free some space or choose another folder"),
    (errno.EROFS, "Read-only file system", "the file system is read-only; choose another output folder"),
    (errno.EACCES, "Permission denied", "permission denied; check the file's and folder's permissions"),
    (errno.EPERM, "Operation not permitted", "permission denied; check the file's and folder's permissions"),
    (errno.ENOENT, "No such file or directory", "a file is missing (moved or deleted while the job ran?)"),
    (None, "database is locked", "the file is locked by another program (QGIS editing it?); save or close it "
                                  "there and run again"),
)


def user_message(exc: BaseException) -> str | None:
    """One line for a failure a user can cause or meet that reached a job as an OSError, or as GDAL's,
    SQLite's or Ray's wrapping of one (a full disk, a read-only folder, permissions, a missing or locked
    file, a killed process); None for an internal error (which keeps its traceback)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        for code, words, advice in _OS_FAILURES:
            if (code is not None and isinstance(current, OSError) and current.errno == code) or words in text:
                where = getattr(current, "filename", None)
                return f"Failed: {advice}" + (f" ({where})" if where else f" ({_first_line(text)})")
        if type(current).__name__ in ("WorkerCrashedError", "ActorDiedError", "NodeDiedError"):
            return f"Failed: a process of the job was killed ({_first_line(text)}); run the job again"
        current = current.__cause__ or current.__context__
    return None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 200 else line[:197] + "..."
