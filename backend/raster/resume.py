"""A job's resume store: its finished work, kept beside the cache (never in the output folder) until the
job completes, so that a run after a stopped or killed one goes on at tile granularity.

A stop (Ctrl-C, SIGTERM, SIGHUP, a cancel, a crash) leaves no file in the output folder: the outputs are
written under temporary names there and removed. What survives is here, under
``<cache>/resume/<key>/``: per output chunk, the rows already final (``strip-*.npz``: the output
arrays of finished rows) and a checkpoint of the blending state (``state-<chunk>.npz``: the score and
weight sums of the rows tiles still touch, and how many of the chunk's tiles they hold). A checkpoint
is taken each time a whole row of tiles has been blended in since the last one, so a killed run redoes
at most one row of tiles (plus the batch in flight). Every file is written under a temporary name and
renamed; ``journal.json`` is renamed last and alone says what is valid. The store is keyed by the
job's fingerprint (everything that changes the pixels) and its output folder; a store of another job
is never read, and stores untouched for :data:`MAX_AGE_DAYS` are removed. Jobs whose tiles do not blend
(SkySense's classify and prototypes) keep the model's outputs batch by batch instead
(``batch-*.npz``, through :class:`~backend.inference.resumable.ResumablePredictor`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..hub.paths import cache_dir

RESUME_SUBFOLDER = "resume"
JOURNAL_NAME = "journal.json"
FORMAT = "terrafuse-resume"
#: Stores older than this (a job never run again) are removed when another store is opened.
MAX_AGE_DAYS = 14


def resume_root() -> Path:
    return cache_dir() / RESUME_SUBFOLDER


def store_key(fingerprint: str, out: str | os.PathLike[str]) -> str:
    """The store of one job writing into one folder (two folders never share a store)."""
    text = f"{fingerprint}\n{Path(out).expanduser().resolve()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class ChunkProgress:
    """What a chunk holds in the store: ``tiles`` of its tiles blended in; ``strips``: files of its final
    rows; ``state``: the checkpoint of its blending state (None at a chunk's start or end); ``done``."""

    tiles: int = 0
    strips: list[str] = field(default_factory=list)
    state: str | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"tiles": self.tiles, "strips": self.strips, "state": self.state, "done": self.done}


class ResumeStore:
    """The store of one job (see the module's docstring). ``fresh`` empties it first."""

    def __init__(self, fingerprint: str, out: str | os.PathLike[str], fresh: bool = False,
                 root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else resume_root()
        self.fingerprint = fingerprint
        self.folder = self.root / store_key(fingerprint, out)
        self.chunks: dict[int, ChunkProgress] = {}
        self.extra: dict[str, Any] = {}
        #: Outputs kept batch by batch (:class:`~backend.inference.resumable.ResumablePredictor`).
        self.batches = 0
        self._prune()
        if fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._load()

    # -- reading --------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads((self.folder / JOURNAL_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("fingerprint") != self.fingerprint:
            shutil.rmtree(self.folder, ignore_errors=True)  # nothing usable: start clean
            return
        try:
            self.chunks = {int(k): ChunkProgress(int(v["tiles"]), [str(s) for s in v["strips"]], v.get("state"),
                                                 bool(v["done"])) for k, v in data["chunks"].items()}
            self.extra = dict(data.get("extra") or {})
            self.batches = int(data.get("batches", 0))
        except (KeyError, TypeError, ValueError):
            self.chunks, self.extra, self.batches = {}, {}, 0
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def resumed(self) -> bool:
        return self.batches > 0 or any(c.tiles or c.done for c in self.chunks.values())

    def chunk(self, index: int) -> ChunkProgress:
        return self.chunks.get(index, ChunkProgress())

    def read(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.folder / Path(name).name, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    # -- writing --------------------------------------------------------------------------------------
    def _write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{name}.{os.getpid()}.tmp"
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, self.folder / name)
        return name

    def checkpoint(self, index: int, tiles: int, strips: list[dict[str, np.ndarray]],
                   state: dict[str, np.ndarray] | None, done: bool) -> None:
        """Record chunk ``index``: ``tiles`` blended in, the final rows ``strips`` since the last checkpoint,
        and the blending ``state`` (None when the chunk is done)."""
        entry = self.chunks.setdefault(index, ChunkProgress())
        for strip in strips:
            entry.strips.append(self._write_arrays(f"strip-{index:05d}-{int(strip['row_off']):08d}.npz", strip))
        old_state = entry.state
        entry.state = self._write_arrays(f"state-{index:05d}-{tiles:06d}.npz", state) if state is not None else None
        entry.tiles, entry.done = tiles, done
        self._save_journal()
        if old_state and old_state != entry.state:
            (self.folder / old_state).unlink(missing_ok=True)

    def save_batch(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        """The model's outputs of batch ``index`` (the batches before it are kept already)."""
        if index != self.batches:
            raise ValueError(f"batch {index} kept after {self.batches} batches")
        self._write_arrays(f"batch-{index:06d}.npz", {k: np.asarray(v) for k, v in outputs.items()})
        self.batches = index + 1
        self._save_journal()

    def read_batch(self, index: int) -> dict[str, np.ndarray]:
        return self.read(f"batch-{index:06d}.npz")

    def set_extra(self, **values: Any) -> None:
        """Facts the job keeps with its tiles (its provenance: the date it first ran)."""
        self.extra.update(values)
        self._save_journal()

    def _save_journal(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "fingerprint": self.fingerprint, "extra": self.extra, "batches": self.batches,
                "chunks": {str(k): v.to_json() for k, v in sorted(self.chunks.items())}}
        temporary = self.folder / f".{JOURNAL_NAME}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(data, default=str), encoding="utf-8")
        os.replace(temporary, self.folder / JOURNAL_NAME)

    def remove(self) -> None:
        """The job is complete: its store goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.chunks.clear()
        self.batches = 0

    def _prune(self) -> None:
        if not self.root.is_dir():
            return
        limit = time.time() - MAX_AGE_DAYS * 86400
        for folder in self.root.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue
