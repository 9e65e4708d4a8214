"""Where a job's tiles run: a :class:`~.predictor.LocalPredictor` in this process, or a
:class:`~.cluster.RayPredictor` on the Ray cluster the job's ``cluster`` parameter names."""

from __future__ import annotations

from typing import Any

from .device import default_device
from .predictor import LocalPredictor, TilePredictor
from .spec import TileModelSpec
from .tile_model import load_tile_model


def make_predictor(spec: TileModelSpec, params: dict[str, Any], device: Any = None,
                   progress: Any = None) -> TilePredictor:
    """A :class:`LocalPredictor` on ``device`` (default: the GPU if there is one), or a Ray predictor
    when ``params["cluster"]`` names a cluster address (with the job's ``actors``, ``threads`` and
    ``in_flight``, where set; ``progress`` hears what the cluster waits for and cancels the wait)."""
    address = params.get("cluster")
    if address:
        from ..stop_signals import kept_signal_handlers
        from .cluster import RayPredictor

        with kept_signal_handlers():  # ray.init makes SIGTERM exit at once; ours stops the job cleanly
            return RayPredictor(spec, address, **cluster_options(params), progress=progress)
    if device is None:
        device = default_device()
    return LocalPredictor(load_tile_model(spec, device), prefetch=int(params.get("prefetch") or 2))


def cluster_options(params: dict[str, Any]) -> dict[str, int]:
    """The job's placement options that are set: ``actors``, ``threads`` per actor, ``in_flight`` batches."""
    return {key: int(params[key]) for key in ("actors", "threads", "in_flight") if params.get(key)}
