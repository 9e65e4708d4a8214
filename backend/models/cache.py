"""Loaded backbones kept between jobs, so that a second segmentation in the worker starts at once.

The worker runs one job at a time in one process ("models stay loaded between jobs"); a small
least-recently-used cache keyed by (source, device, dtype) holds the frozen backbones, which are the
expensive part (seconds to minutes, gigabytes). Heads are small and read again each time, so that a
head retrained in the meantime is never served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .diffusion import DiffusionBackbone


def _source_key(source: str) -> tuple[str, int]:
    """A folder or archive by its absolute path and modification time (a replaced model reloads)."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve()), path.stat().st_mtime_ns
    return source, 0


class BackboneCache:
    """At most ``capacity`` loaded backbones; the least recently used is dropped first."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[object, ...], DiffusionBackbone] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
            unet_folder: str | None = None) -> DiffusionBackbone:
        from .diffusion import load_backbone

        key = (*_source_key(source), str(torch.device(device)), str(dtype), unet_folder or "")
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            # Drop first: two large backbones may not fit side by side.
            while len(self._items) >= max(1, self.capacity):
                self._items.popitem(last=False)
            backbone = load_backbone(source, device, dtype, unet_folder=unet_folder)
            self.loads += 1
            self._items[key] = backbone
            return backbone

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The process's cache: the worker and the command line each run in their own process.
BACKBONES = BackboneCache()
