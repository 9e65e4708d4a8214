"""A resumable job's fingerprint: what identifies its pixels, so that a later run finds the finished work
of a stopped one (in its resume store, :mod:`.resume`) and never that of another job."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
