"""A predictor that keeps the model's outputs in the job's resume store, batch by batch, so that a run
after a stopped or killed one takes the batches already done from the store and predicts the rest.

It wraps any :class:`~.predictor.TilePredictor` (in this process or on a Ray cluster), so resuming works
the same on one machine and on a cluster. The batches must come in the same order on every run of the
job (the job's fingerprint, which keys the store, covers everything that decides them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..raster.resume import ResumeStore
from .predictor import TilePredictor


class ResumablePredictor:
    """``inner`` with its outputs kept in ``store``; :attr:`resumed` counts the batches taken from it."""

    def __init__(self, inner: TilePredictor, store: ResumeStore) -> None:
        self.inner = inner
        self.store = store
        self.provenance: dict[str, Any] = inner.provenance
        self.resumed = 0

    def map(self, batches: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(batches)
        index = 0
        try:
            while index < self.store.batches:
                try:
                    next(iterator)  # read and dropped: its outputs are in the store
                except StopIteration:
                    return
                yield self.store.read_batch(index)
                index += 1
                self.resumed += 1
            outputs = self.inner.map(iterator)
            try:
                for out in outputs:
                    self.store.save_batch(index, out)
                    index += 1
                    yield out
            finally:
                outputs.close()  # type: ignore[attr-defined]
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        """The inner predictor's other attributes (a cluster run's ``report``, for instance)."""
        if name == "inner":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inner, name)
