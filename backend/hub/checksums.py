"""Content hashes of model files: a backbone's sha256 is its provenance in every output's metadata.

Hashing a multi-gigabyte checkpoint takes a while, so the result is recorded next to the files (or in
Terrafuse's cache when the folder is read-only) together with each file's size and modification time;
the record is reused as long as these match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ..atomic_files import write_text
from .paths import cache_dir

log = logging.getLogger("terrafuse.hub")

HASH_RECORD_NAME = "terrafuse_sha256.json"
_CHUNK_B = 8 * 2**20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_B):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    stat = path.stat()  # follows symlinks: hub snapshots link to blobs
    return [stat.st_size, stat.st_mtime_ns]


def _fallback_record_path(root: Path, names: list[str]) -> Path:
    key = hashlib.sha256("\0".join([str(root.resolve()), *names]).encode()).hexdigest()[:32]
    return cache_dir() / "hashes" / f"{key}.json"


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_record(path: Path, record: dict) -> bool:
    try:
        write_text(path, json.dumps(record, indent=1, sort_keys=True))
    except OSError:
        return False
    return True


def files_sha256(root: Path, relpaths: Iterable[str], *, record_in_folder: bool = True) -> str:
    """sha256 over the sorted ``relpath`` and sha256 of each file: one hash for a set of files.

    The record lives in ``root/terrafuse_sha256.json`` when ``record_in_folder`` and the folder is
    writable, otherwise in Terrafuse's cache, keyed by the folder's resolved path and the file names.
    """
    root = Path(root)
    names = sorted(set(relpaths))
    stamps = {name: _stamp(root / name) for name in names}
    candidates = [root / HASH_RECORD_NAME] if record_in_folder else []
    candidates.append(_fallback_record_path(root, names))
    for record_path in candidates:
        record = _read_record(record_path)
        if record and record.get("files") == stamps and isinstance(record.get("sha256"), str):
            return record["sha256"]
    log.info("computing the sha256 of %d files under %s (once)", len(names), root)
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{file_sha256(root / name)}\n".encode())
    sha256 = digest.hexdigest()
    record = {"files": stamps, "sha256": sha256}
    if not any(_write_record(path, record) for path in candidates):
        log.warning("could not record the sha256 of %s; it will be computed again next time", root)
    return sha256
