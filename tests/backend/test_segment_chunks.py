"""The segment engine's chunks: results independent of chunking, resume after a killed run, and no
file left by a cancel or a failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch

from backend import segment as segment_module
from backend.errors import JobCancelled
from backend.progress import Progress
from backend.raster.chunks import chunk_windows, tiles_touching
from backend.raster.journal import JOURNAL_NAME
from backend.raster.tiles import tile_windows
from backend.worker import run_job
from tests.backend.rasters import write_area, write_raster
from tests.backend.segment_stand_in import CountingModel, smooth_image, use_stand_in, write_head_config

ROOT = Path(__file__).resolve().parents[2]
X0, Y0, PIXEL = 443330.0, 4173860.0, 10.0
OUTPUTS = ("classes.tif", "confidence.tif", "uncertainty.tif")


@pytest.fixture
def head(tmp_path: Path) -> Path:
    return write_head_config(tmp_path / "head")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """700 x 301 px: with 256 px chunks, 3 x 2 chunks, the last row and column cut short."""
    return write_raster(tmp_path_factory.mktemp("chunks") / "tall.tif", smooth_image(700, 301))


def params(head: Path, image: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {"image": str(image), "model": str(head), "out": str(out), "overlap_px": 16, "batch_size": 3,
            "uncertainty": True, **extra}


def read_outputs(folder: Path) -> dict[str, Any]:
    rasters = {}
    for name in OUTPUTS:
        with rasterio.open(folder / name) as dst:
            rasters[name] = dst.read(1)
    _, _, wkb, (ids, _, areas, confidence) = pyogrio.raw.read(str(folder / "classes.gpkg"))
    polygons = sorted(zip(ids.tolist(), np.round(areas, 3).tolist(), np.round(confidence, 5).tolist()))
    return {"rasters": rasters, "polygons": polygons}


def assert_same_outputs(a: Path, b: Path) -> None:
    first, second = read_outputs(a), read_outputs(b)
    for name in OUTPUTS:
        assert np.array_equal(first["rasters"][name], second["rasters"][name]), name
    assert first["polygons"] == second["polygons"]


@pytest.fixture(scope="module")
def single_chunk(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:
        use_stand_in(patch)
        triangle = shapely.Polygon([(X0, Y0), (X0 + 300 * PIXEL, Y0), (X0, Y0 - 600 * PIXEL)])
        area = write_area(folder / "aoi.gpkg", [triangle], "EPSG:32618")
        result = run_job("segment", params(write_head_config(folder / "head"), image, folder / "out",
                                           aoi=str(area)), Progress())
    assert result["chunks"] == 1
    return folder


def test_several_chunks_give_the_single_chunk_result(single_chunk: Path, image: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = CountingModel()
    use_stand_in(monkeypatch, model)
    monkeypatch.setattr(segment_module, "CHUNK_PX", 256)
    result = run_job("segment", params(single_chunk / "head", image, tmp_path / "out",
                                       aoi=str(single_chunk / "aoi.gpkg")), Progress())
    assert result["chunks"] == 6
    # Tiles straddling chunk borders are predicted once per chunk they touch.
    assert result["tile_predictions"] == model.tiles > result["tiles"]
    assert_same_outputs(single_chunk / "out", tmp_path / "out")


KILLED_RUN = """
import json, os, sys
from pathlib import Path
import pytest
from backend import segment
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.segment_stand_in import use_stand_in

use_stand_in(pytest.MonkeyPatch())
segment.CHUNK_PX = 256
params = json.loads(sys.argv[1])
journal = Path(params["out"]) / ".terrafuse-journal.json"

def kill_after_two_chunks(done, total, message):
    if journal.exists() and len(json.loads(journal.read_text())["done"]) >= 2:
        os._exit(9)  # as a killed process: no cleanup of any kind

run_job("segment", params, Progress(kill_after_two_chunks, min_interval_s=0))
"""


def run_killed(job: dict[str, Any]) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(job)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 9, done.stderr[-2000:]


def test_a_run_after_a_killed_one_skips_its_finished_chunks(image: Path, head: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    job = params(head, image, out)
    run_killed(job)
    journal = json.loads((out / JOURNAL_NAME).read_text())
    assert journal["done"] == [0, 1]
    assert all((out / name).exists() for name in journal["files"])
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # nothing under a final name

    model = CountingModel()
    use_stand_in(monkeypatch, model)
    monkeypatch.setattr(segment_module, "CHUNK_PX", 256)
    seen: list[tuple[int, int]] = []
    result = run_job("segment", job, Progress(lambda done, total, message: seen.append((done, total)),
                                              min_interval_s=0))
    tiles = tile_windows(rasterio.windows.Window(0, 0, 301, 700), 64, 16, (700, 301))
    chunk_tiles = [len(tiles_touching(tiles, chunk)) for chunk in chunk_windows(
        rasterio.windows.Window(0, 0, 301, 700), 256)]
    assert result["chunks_resumed"] == 2
    assert model.tiles == result["tile_predictions"] == sum(chunk_tiles[2:])  # chunks 0 and 1 not predicted again
    assert seen[0][0] == sum(chunk_tiles[:2])  # progress counts them as done
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # journal and partials gone

    monkeypatch.setattr(segment_module, "CHUNK_PX", 4096)
    run_job("segment", params(head, image, tmp_path / "whole"), Progress())
    assert_same_outputs(tmp_path / "whole", out)


def test_a_killed_run_of_another_job_is_cleared_not_resumed(image: Path, head: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run_killed(params(head, image, out))
    model = CountingModel()
    use_stand_in(monkeypatch, model)
    monkeypatch.setattr(segment_module, "CHUNK_PX", 256)
    result = run_job("segment", params(head, image, out, overlap_px=8), Progress())
    assert result["chunks_resumed"] == 0
    assert model.tiles == result["tile_predictions"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("how", ["cancel", "failure"])
def test_a_cancel_or_a_failure_after_some_chunks_leaves_nothing(image: Path, head: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    out = tmp_path / "out"

    class FailingLater(CountingModel):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if how == "failure" and self.tiles > 40:
                raise RuntimeError("the model broke")
            return super().forward(images)

    use_stand_in(monkeypatch, FailingLater())
    monkeypatch.setattr(segment_module, "CHUNK_PX", 256)

    def cancel_after_two_chunks(done: int, total: int, message: str) -> None:
        journal = out / JOURNAL_NAME
        if how == "cancel" and journal.exists() and len(json.loads(journal.read_text())["done"]) >= 2:
            progress.cancel()

    progress = Progress(cancel_after_two_chunks, min_interval_s=0)
    with pytest.raises(JobCancelled if how == "cancel" else RuntimeError):
        run_job("segment", params(head, image, out), progress)
    assert not out.exists()  # the job created the folder: it goes too
