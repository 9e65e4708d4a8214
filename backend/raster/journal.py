"""A resumable job's journal: the job's fingerprint and the chunks already written, beside its
temporary outputs.

It is written (atomically) after each finished chunk; a run that finds one with its own fingerprint,
and the temporary files it names, goes on from there. A cancelled or failed job removes it with its
temporary files; only a killed process leaves it behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

JOURNAL_NAME = ".terrafuse-journal.json"
JOURNAL_FORMAT = "terrafuse-journal"


def fingerprint(facts: dict[str, Any]) -> str:
    """sha256 of the JSON of ``facts`` (everything that changes the output's pixels)."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_facts(path: str) -> dict[str, Any]:
    """A file's identity for a fingerprint: its absolute path, size and modification time (a path GDAL
    opens that is not a file, such as a URL, is taken as given)."""
    file = Path(path)
    if not file.is_file():
        return {"path": path}
    stat = file.stat()
    return {"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Journal:
    """``done``: the chunks written so far; ``files``: the temporary files they are in."""

    def __init__(self, path: Path, fingerprint: str, files: list[str], created_folder: bool) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.files = files
        self.created_folder = created_folder
        self.done: set[int] = set()

    @classmethod
    def resume(cls, folder: Path, fingerprint: str, files: list[str], created_folder: bool) -> Journal:
        """The journal of the job ``fingerprint`` in ``folder``: the one left by an interrupted run of the
        same job when it and all of ``files`` exist (``done`` filled in), else a fresh one. A journal of
        another job is removed with the temporary files it names."""
        path = folder / JOURNAL_NAME
        journal = cls(path, fingerprint, files, created_folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return journal
        if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
            return journal
        if data.get("fingerprint") == fingerprint and all((folder / name).exists() for name in files):
            journal.done = {int(i) for i in data.get("done", [])}
            journal.created_folder = bool(data.get("created_folder", created_folder))
            return journal
        for name in data.get("files", []):
            stale = folder / Path(str(name)).name  # names only: a journal never points outside its folder
            if stale.name.startswith(".") and stale.exists():
                stale.unlink()
        path.unlink()
        return journal

    def mark_done(self, chunk: int) -> None:
        self.done.add(chunk)
        self.save()

    def save(self) -> None:
        data = {"format": JOURNAL_FORMAT, "fingerprint": self.fingerprint, "files": self.files,
                "created_folder": self.created_folder, "done": sorted(self.done)}
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, self.path)
