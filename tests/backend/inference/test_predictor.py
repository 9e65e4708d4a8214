"""LocalPredictor: order, bounded read-ahead, errors, early stop, out-of-memory halving; make_predictor."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from backend.inference import executor
from backend.inference.executor import make_predictor
from backend.inference.predictor import LocalPredictor, TilePredictor
from backend.inference.tile_model import TileModelSpec


class Doubling:
    """Outputs 2 x input; records the batch sizes it saw; fails like CUDA above ``fits`` tiles."""

    provenance = {"model": "doubling"}
    max_batch = None

    def __init__(self, fits: int | None = None, error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        self.fits = fits
        self.error = error
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fits is not None and len(batch) > self.fits:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.sizes.append(len(batch))
        return batch * 2


def batches(count: int, size: int = 4) -> list[np.ndarray]:
    return [np.full((size, 1, 2, 2), i, dtype=np.float32) for i in range(count)]


def test_outputs_come_in_input_order() -> None:
    local = LocalPredictor(Doubling())
    assert isinstance(local, TilePredictor)
    outputs = list(local.map(iter(batches(7))))
    assert [float(o[0, 0, 0, 0]) for o in outputs] == [2.0 * i for i in range(7)]
    assert local.provenance == {"model": "doubling"}


def test_reading_runs_ahead_by_at_most_prefetch_batches() -> None:
    read: list[int] = []

    def reader() -> Iterator[np.ndarray]:
        for i, batch in enumerate(batches(20)):
            read.append(i)
            yield batch

    local = LocalPredictor(Doubling(), prefetch=2)
    outputs = local.map(reader())
    next(outputs)
    time.sleep(0.3)  # time for the reading thread to run ahead as far as it may
    # one consumed, two queued, one read and waiting for a free slot
    assert len(read) <= 1 + 2 + 1
    outputs.close()  # the consumer stops early: the reading thread ends
    assert not [t for t in threading.enumerate() if t.name == "terrafuse-tile-reader"]


def test_reading_overlaps_the_model() -> None:
    def slow_reader() -> Iterator[np.ndarray]:
        for batch in batches(6):
            time.sleep(0.05)
            yield batch

    class Slow(Doubling):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            time.sleep(0.05)
            return super().__call__(batch)

    started = time.monotonic()
    assert len(list(LocalPredictor(Slow()).map(slow_reader()))) == 6
    assert time.monotonic() - started < 0.5  # one after the other: 0.6 s


def test_an_error_while_reading_reaches_the_consumer() -> None:
    def failing() -> Iterator[np.ndarray]:
        yield batches(1)[0]
        raise ValueError("cannot read tile 2")

    outputs = LocalPredictor(Doubling()).map(failing())
    next(outputs)
    with pytest.raises(ValueError, match="cannot read tile 2"):
        next(outputs)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_the_batch_and_remembers(error: type[Exception]) -> None:
    model = Doubling(fits=3, error=error)
    local = LocalPredictor(model)
    data = [np.arange(8 * 4, dtype=np.float32).reshape(8, 1, 2, 2), np.ones((8, 1, 2, 2), np.float32)]
    outputs = list(local.map(data))
    np.testing.assert_array_equal(outputs[0], data[0] * 2)  # split and joined back in order
    np.testing.assert_array_equal(outputs[1], data[1] * 2)
    assert local.max_batch == 2
    assert model.sizes == [2, 2, 2, 2, 2, 2, 2, 2]  # 8 > 3: 4 > 3: 2; the second batch starts at 2


def test_out_of_memory_with_one_tile_and_other_errors_are_raised() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(LocalPredictor(Doubling(fits=0)).map(batches(1)))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(LocalPredictor(_Raising(RuntimeError("shape mismatch"))).map(batches(1)))


class _Raising(Doubling):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise self.exc


def test_dict_batches_are_split_and_joined() -> None:
    class DictModel(Doubling):
        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            if len(batch["hr"]) > 1:
                raise torch.cuda.OutOfMemoryError("out of memory")
            return {"logits": torch.from_numpy(batch["hr"] + batch["offset"])}

    batch = {"hr": np.arange(3, dtype=np.float32)[:, None], "offset": 10}
    (output,) = LocalPredictor(DictModel()).map([batch])
    assert output["logits"][:, 0].tolist() == [10.0, 11.0, 12.0]


def test_make_predictor_is_local_without_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.inference import tile_model

    loaded: list[Any] = []
    monkeypatch.setattr(tile_model, "_LOADERS", {"segment": lambda spec, device: loaded.append(device) or Doubling()})
    spec = TileModelSpec("segment", {"model": "head", "backbone": None})
    local = make_predictor(spec, {"cluster": None}, device="cpu")
    assert isinstance(local, LocalPredictor)
    assert [str(d) for d in loaded] == ["cpu"]


def test_make_predictor_hands_a_cluster_address_to_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[TileModelSpec, str, dict[str, Any]]] = []

    class FakeRay:
        provenance: dict[str, Any] = {}

        def __init__(self, spec: TileModelSpec, address: str, **options: Any) -> None:
            made.append((spec, address, options))

    monkeypatch.setitem(sys.modules, "backend.inference.cluster", types.SimpleNamespace(RayPredictor=FakeRay))
    spec = TileModelSpec("segment", {"model": "head", "backbone": None})
    assert isinstance(executor.make_predictor(spec, {"cluster": "ray://10.0.0.5:10001"}), FakeRay)
    assert made == [(spec, "ray://10.0.0.5:10001", {"progress": None})]
    progress = object()
    executor.make_predictor(spec, {"cluster": "local", "actors": 3, "threads": 2, "in_flight": None},
                            progress=progress)
    assert made[-1] == (spec, "local", {"actors": 3, "threads": 2, "progress": progress})
