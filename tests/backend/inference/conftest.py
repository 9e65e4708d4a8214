"""The local Ray of the cluster tests: one per test module (as ``cluster="local"`` starts it), which the
jobs attach to and leave running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def ray_env() -> dict[str, str]:
    """Environment variables the local Ray's workers inherit (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def local_ray(ray_env: dict[str, str]) -> Iterator[Any]:
    """A :class:`~backend.inference.cluster.RaySession` on this machine, bound to the loopback interface."""
    ray = pytest.importorskip("ray")
    from backend.inference.cluster import RaySession

    with pytest.MonkeyPatch.context() as patch:
        for name, value in ray_env.items():
            patch.setenv(name, value)
        session = RaySession.open("local")
        try:
            yield session
        finally:
            session.close()
    assert not ray.is_initialized()


def record_predictors(monkeypatch: pytest.MonkeyPatch, **options: Any) -> list[Any]:
    """Make the jobs' ``make_predictor`` build RayPredictors with ``options`` (e.g. ``actors=2``), each kept
    in the returned list for the test to look at."""
    from backend.inference import cluster

    made: list[Any] = []

    class Recorded(cluster.RayPredictor):
        def __init__(self, spec: Any, address: str, **given: Any) -> None:
            made.append(self)  # before the actors start: a test sees a predictor that failed to start
            super().__init__(spec, address, **{**given, **options})

    monkeypatch.setattr(cluster, "RayPredictor", Recorded)
    return made
