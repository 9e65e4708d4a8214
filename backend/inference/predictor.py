"""Predictors: run a tile model over a stream of batches, in order, with a bounded number in flight.

The engines hand a predictor a lazy iterable of batches (each one read from a raster when the
iterator is advanced) and consume its outputs one by one; they never call the model directly, so
the same engine runs in-process (:class:`LocalPredictor`) or on a Ray cluster
(``backend.inference.cluster.RayPredictor``), chosen by :func:`.executor.make_predictor`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .spec import TileModel

LOG = logging.getLogger(__name__)


@runtime_checkable
class TilePredictor(Protocol):
    """``map`` yields one output per input batch, in input order, lazily, reading at most a few
    batches ahead; the consumer may stop early (closing the generator), which stops the reading.
    ``close`` frees the model or workers (idempotent). ``provenance`` is what outputs record about the
    model (may be empty)."""

    provenance: dict[str, Any]

    def map(self, batches: Iterable[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) allocation failure: torch's OutOfMemoryError, or a RuntimeError
    saying "out of memory" (older torch, MPS, cuDNN workspaces)."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def batch_length(batch: Any) -> int:
    """Tiles in a batch: an array's first axis, or that of a dict's or sequence's first array."""
    if isinstance(batch, dict):
        return batch_length(next(v for v in batch.values() if hasattr(v, "shape")))
    if isinstance(batch, (list, tuple)):
        return batch_length(batch[0])
    return int(batch.shape[0])


def batch_slice(batch: Any, start: int, stop: int) -> Any:
    """Tiles ``start:stop`` of a batch; dict values and sequence items without a shape are shared."""
    if isinstance(batch, dict):
        return {k: batch_slice(v, start, stop) if hasattr(v, "shape") else v for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_slice(v, start, stop) for v in batch)
    return batch[start:stop]


def batch_concat(parts: list[Any]) -> Any:
    """The inverse of :func:`batch_slice` over consecutive parts (numpy arrays or torch tensors)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {k: batch_concat([p[k] for p in parts]) if hasattr(first[k], "shape") else first[k] for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(batch_concat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


_ITEM, _END, _ERROR = "item", "end", "error"


class LocalPredictor:
    """The model in this process. The input iterator runs in one background thread, ``prefetch``
    batches ahead of the model (raster reads and decompression release the GIL, so they overlap the
    forward passes). A batch that runs out of accelerator memory is split in halves and retried; the
    size that fitted is kept for the following batches."""

    def __init__(self, tile_model: TileModel, prefetch: int = 2) -> None:
        self.tile_model = tile_model
        self.prefetch = max(1, int(prefetch))
        self.max_batch: int | None = getattr(tile_model, "max_batch", None)
        self.provenance: dict[str, Any] = dict(getattr(tile_model, "provenance", {}) or {})
        self.calls = 0

    def map(self, batches: Iterable[Any]) -> Iterator[Any]:
        pending: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    pending.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            iterator = iter(batches)
            try:
                for batch in iterator:
                    if not put((_ITEM, batch)):
                        return
                put((_END, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, raised there
                put((_ERROR, exc))
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        reader = threading.Thread(target=read, name="terrafuse-tile-reader", daemon=True)
        reader.start()
        try:
            while True:
                kind, value = pending.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield self.predict(value)
        finally:
            stop.set()
            reader.join()

    def predict(self, batch: Any) -> Any:
        """The model on one batch, in parts of at most :attr:`max_batch` tiles, halving on OOM."""
        count = batch_length(batch)
        parts, start = [], 0
        while start < count:
            size = min(self.max_batch or count, count - start)
            try:
                self.calls += 1
                parts.append(self.tile_model(batch_slice(batch, start, start + size) if size < count else batch))
            except Exception as exc:
                if not is_out_of_memory(exc) or size <= 1:
                    raise
                self.max_batch = size // 2
                LOG.warning("Out of memory with %d tiles per batch; going on with %d", size, self.max_batch)
                _free_accelerator_memory()
                continue
            start += size
        return batch_concat(parts)

    def close(self) -> None:
        self.tile_model = None  # type: ignore[assignment]
        _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
