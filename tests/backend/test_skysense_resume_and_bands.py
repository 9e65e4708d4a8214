"""SkySense's classify after a stop: the batches done come from the job's resume store (through the predictor
seam), the output is the uninterrupted one; and data of another scale than the model's is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from backend.errors import UserError
from backend.inference import skysense_model
from backend.models.skysense import SkySense
from backend.progress import Progress
from backend.worker import run_job
from tests.backend import test_skysense_jobs
from tests.backend.test_skysense_jobs import BOX, UTM, _write

scene = test_skysense_jobs.scene  # the small synthetic scene with its tiny SkySense (a module fixture)

S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def classify(scene: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    return run_job("classify", {"model": scene["model"], "s2": ",".join(scene["s2"]), "out": str(out),
                                "batch_size": 1, "tile_px": 16, **extra}, Progress())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_a_stopped_classify_resumes_from_its_finished_batches(scene: dict[str, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reference = classify(scene, tmp_path / "reference")
    calls: list[int] = []
    call = skysense_model.SkySenseTileModel.__call__

    def failing(self: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt  # as Ctrl-C, or SIGTERM through the command line's handler
        return call(self, batch)

    monkeypatch.setattr(skysense_model.SkySenseTileModel, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        classify(scene, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing in the output folder
    stores = list((Path(os.environ["TERRAFUSE_CACHE_DIR"]) / "resume").iterdir())
    assert len(stores) == 1  # the finished batches, beside the cache

    calls.clear()
    monkeypatch.setattr(skysense_model.SkySenseTileModel, "__call__", lambda self, batch: (calls.append(1),
                                                                                          call(self, batch))[1])
    result = classify(scene, tmp_path / "out")
    assert result["batches_resumed"] == 4
    assert len(calls) == 9 - 4  # 40 x 40 cells in tiles of 16: 9 batches of one tile
    for name in ("classes.tif", "confidence.tif"):
        np.testing.assert_array_equal(read(tmp_path / "out" / name), read(Path(reference["outputs"]["classes"]).parent
                                                                          / name))
    assert not list((Path(os.environ["TERRAFUSE_CACHE_DIR"]) / "resume").iterdir())  # gone once complete


def test_reflectance_for_a_model_of_digital_numbers_is_refused(scene: dict[str, Any], tmp_path: Path) -> None:
    model = SkySense.from_pretrained(scene["model"])
    model.config.normalisation = {"s2": {"p2": [2000.0] * 10, "p98": [4500.0] * 10}}  # trained on 16-bit numbers
    model.save_pretrained(tmp_path / "model")
    reflectance = []
    for path in scene["s2"]:
        with rasterio.open(path) as src:
            data = src.read().astype(np.float32) / 10000
        reflectance.append(_write(tmp_path / Path(path).name, data, UTM, BOX, S2_BANDS))
    params = {"model": str(tmp_path / "model"), "s2": ",".join(reflectance), "out": str(tmp_path / "out")}
    with pytest.raises(UserError, match=r"S2 values around 3.25e\+03.*another scale.*rescale-per-area"):
        run_job("classify", params, Progress())
    assert not (tmp_path / "out").exists()
    result = run_job("classify", {**params, "rescale_per_area": True}, Progress())
    assert result["provenance"]["normalisation"]["s2"]["p98"][0] < 100  # the area's own percentiles
    assert result["warnings"] == []
