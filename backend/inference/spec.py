"""What a tile model is, without loading one: the picklable :class:`TileModelSpec` that executors pass
around (to a Ray actor, say) and the :class:`TileModel` protocol of what it loads into
(:func:`.tile_model.load_tile_model`). Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

TILE_JOBS = ("segment", "classify", "prototypes")


@dataclass(frozen=True)
class TileModelSpec:
    """What to load: ``job`` names the model family, ``params`` its files (plain JSON-like values)."""

    job: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.job not in TILE_JOBS:
            raise ValueError(f"job must be one of {', '.join(TILE_JOBS)}; got {self.job!r}")


class TileModel(Protocol):
    """``model(batch) -> outputs`` on numpy; ``provenance`` is what outputs record about the model and
    ``max_batch`` a batch size known to fit (None: unknown)."""

    provenance: dict[str, Any]
    max_batch: int | None

    def __call__(self, batch: Any) -> Any: ...
