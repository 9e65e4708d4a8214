"""Backbone features of training tiles, cached on disk so that retraining after a new label takes seconds.

The backbone is by far the slowest part of training (a VAE encoding and K UNet calls per tile), while a
head trains in seconds on features computed once. Each tile's features are stored as one safetensors
file (float16: half the disk, and the fusion reads them back as float32) under a key that changes
whenever the features would: the raster's identity (path, modification time, size), the tile's window,
the backbone's sha256, the timesteps, blocks and levels, the bands and their normalisation. Tiles lie
on a grid anchored to the raster (see :func:`backend.training.samples.grid_windows`), so a new label
re-uses every tile already cached and only its own new tiles are computed.

The cache owns a subfolder of the folder it is given (``<folder>/terrafuse-features``, with its own
index carrying a format marker), so pointing ``--cache-dir`` at a folder of one's own is safe: files there are
never read, adopted or evicted. The subfolder is bounded in size: the least recently used tiles are evicted
first, and only tiles the index says this cache wrote. The index (JSON) keeps each entry's size and last
access; entries are ordered from least to most recently used. Tiles and the index are written under
temporary names created exclusively (:mod:`backend.atomic_files`): a planted link is never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rasterio.windows import Window
from torch import Tensor

from ..atomic_files import write_bytes, write_text
from ..errors import UserError
from ..hub.paths import cache_dir

#: The subfolder the cache owns in the folder it is given (by default Terrafuse's cache dir).
FEATURES_SUBFOLDER = "terrafuse-features"
INDEX_NAME = "index.json"
#: The marker of the index: a subfolder whose index lacks it is not this cache's.
INDEX_FORMAT = "terrafuse-feature-cache"
#: What :meth:`FeatureCache.put` names a tile: its key, a sha256.
_TILE_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")
#: Default size bound of the feature cache: a few hundred tiles of a 512 px backbone.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Bumped when the stored layout of features changes, so that old entries are never read.
FEATURE_FORMAT_VERSION = 1
STORED_DTYPE = torch.float16


def raster_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a raster's pixels cheaply: its absolute path, modification time and size. A file
    rewritten in place gets a new mtime, so its stale features are never read."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {"path": str(resolved), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}


def tile_key(raster: dict[str, Any], window: Window, feature_config: dict[str, Any]) -> str:
    """The cache key of one tile: sha256 of the raster identity, the window and the feature configuration
    (backbone sha256, timesteps, blocks, levels, bands, normalisation)."""
    payload = {"format": FEATURE_FORMAT_VERSION, "raster": raster,
               "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
               "features": feature_config}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class FeatureCache:
    """Tiles' feature lists on disk, keyed by :func:`tile_key`, with a size bound and LRU eviction.

    Counters ``hits``, ``misses`` and ``evicted`` say what happened since the cache was opened.
    Call :meth:`flush` at the end of a job to store the access order of the tiles read.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = (Path(folder) if folder is not None else cache_dir()) / FEATURES_SUBFOLDER
        self.max_bytes = int(max_bytes)
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise UserError(f"{self.folder} is not a folder Terrafuse's feature cache made; choose another cache "
                            "folder")
        new = not self.folder.exists() or not any(self.folder.iterdir())
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.evicted = 0
        self._dirty = False
        if new:
            self._entries: dict[str, dict[str, Any]] = {}
            self._dirty = True
            self.flush()  # the index with its marker claims the subfolder
        else:
            self._entries = self._read_index()

    # -- index -------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _read_index(self) -> dict[str, dict[str, Any]]:
        """The index, reconciled with the folder: entries whose file is gone are dropped, tiles named as
        :meth:`put` names them that the index does not know (another Terrafuse process wrote them) are added as
        least recently used. A subfolder without the index's marker is refused: it is not this cache's."""
        try:
            data = json.loads((self.folder / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise UserError(f"{self.folder} exists but is not Terrafuse's feature cache (no {INDEX_NAME} with its "
                            "marker); nothing in it is used or removed. Choose another cache folder")
        raw = data.get("entries") if isinstance(data.get("entries"), dict) else {}
        entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
        present = {p.stem: p for p in self.folder.glob("*.safetensors") if p.is_file() and not p.is_symlink()}
        known = {k: v for k, v in entries.items() if k in present}
        unknown = {k: {"bytes": p.stat().st_size, "last_access": p.stat().st_mtime}
                   for k, p in present.items() if k not in known and _TILE_NAME.match(p.name)}
        return {**unknown, **known}

    def flush(self) -> None:
        """Write the index (atomically: a crash leaves the previous one)."""
        if not self._dirty:
            return
        write_text(self.folder / INDEX_NAME, json.dumps({"format": INDEX_FORMAT, "entries": self._entries}))
        self._dirty = False

    @property
    def total_bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self._entries.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries and self._path(key).is_file()

    def __len__(self) -> int:
        return len(self._entries)

    def _touch(self, key: str, size: int) -> None:
        self._entries.pop(key, None)
        self._entries[key] = {"bytes": int(size), "last_access": time.time()}  # now the most recently used
        self._dirty = True

    # -- values ------------------------------------------------------------------------------------
    def get(self, key: str) -> list[Tensor] | None:
        """The tile's features as float32 tensors, or None (a miss; an unreadable file counts as one)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        if key not in self._entries or not path.is_file() or path.is_symlink():
            self.misses += 1
            return None
        try:
            stored = load_file(str(path))
            tensors = [stored[str(i)].to(torch.float32) for i in range(len(stored))]
        except (OSError, KeyError, SafetensorError):
            self._remove(key)
            self.misses += 1
            return None
        self.hits += 1
        self._touch(key, path.stat().st_size)
        return tensors

    def put(self, key: str, tensors: Sequence[Tensor]) -> None:
        """Store a tile's features (renamed into place when complete), then evict down to the bound."""
        from safetensors.torch import save

        state = {str(i): t.detach().to("cpu", STORED_DTYPE).contiguous() for i, t in enumerate(tensors)}
        path = write_bytes(self._path(key), save(state))
        self._touch(key, path.stat().st_size)
        self.evict(keep=key)
        self.flush()

    def evict(self, keep: str | None = None) -> None:
        """Remove the least recently used entries until the cache is within ``max_bytes``. ``keep`` (the
        entry just written) goes last, only when it alone exceeds the bound."""
        total = self.total_bytes
        for key in [k for k in self._entries if k != keep] + ([keep] if keep in self._entries else []):
            if total <= self.max_bytes:
                break
            total -= int(self._entries[key]["bytes"])
            self._remove(key)
            self.evicted += 1

    def _remove(self, key: str) -> None:
        """Forget ``key`` and delete its file: only keys of the index, in the cache's own subfolder."""
        if self._entries.pop(key, None) is not None:
            self._path(key).unlink(missing_ok=True)
        self._dirty = True
