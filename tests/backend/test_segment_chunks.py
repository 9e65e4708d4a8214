"""The segment engine's chunks: results independent of chunking, resume at tile granularity after a
stopped or killed process (SIGTERM, SIGHUP, SIGKILL), and no file left by a cancel or a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch

from backend.errors import JobCancelled
from backend.jobs import segment as segment_module
from backend.progress import Progress
from backend.raster.chunks import chunk_windows, tiles_touching
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


#: A real command-line run of segment with the stand-in model, a little slowed down, that counts the tiles
#: it has blended in a file (the test kills it once enough are).
KILLED_RUN = """
import sys, time
from pathlib import Path
import pytest
from backend import __main__ as cli
from backend.jobs import segment
from tests.backend.segment_stand_in import CountingModel, use_stand_in

class Slow(CountingModel):
    def forward(self, images):
        time.sleep(0.02)
        return super().forward(images)

use_stand_in(pytest.MonkeyPatch(), Slow())
segment.CHUNK_PX = int(sys.argv[1])
counter = Path(sys.argv[2])
add = segment.StripAccumulator.add
blended = 0

def counted(self, *args):
    global blended
    add(self, *args)
    blended += 1
    counter.write_text(str(blended))

segment.StripAccumulator.add = counted
sys.exit(cli.main(["--quiet"] + sys.argv[3:]))
"""


def command_line(job: dict[str, Any]) -> list[str]:
    args = ["segment"]
    for key, value in job.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [f"--no-{key.replace('_', '-')}"] if value is False else [flag, str(value)]
    return args


def run_killed(job: dict[str, Any], chunk_px: int, kill_at: int, signum: int, counter: Path) -> tuple[int, str]:
    """Start the command line, wait until it has blended ``kill_at`` tiles, send ``signum``; its exit code,
    stderr, and the tiles it had blended."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(chunk_px), str(counter), *command_line(job)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if counter.exists() and int(counter.read_text() or 0) >= kill_at:
            process.send_signal(signum)
            break
        time.sleep(0.005)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, f"the run finished before it was killed: {stderr[-2000:]}"
    return process.returncode, stderr


@pytest.mark.parametrize(("signum", "chunk_px", "kill_at"), [
    (signal.SIGTERM, 4096, 150),  # tile 150 of one 169-tile chunk
    (signal.SIGKILL, 4096, 150),
    (signal.SIGHUP, 256, 100),  # in the third of six chunks
])
def test_a_stopped_run_resumes_at_tile_granularity(signum: int, chunk_px: int, kill_at: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_raster(tmp_path / "scene.tif", smooth_image(640, 640))  # 13 x 13 tiles of 64 px, 48 apart
    head = write_head_config(tmp_path / "head")
    out = tmp_path / "out"
    job = params(head, image, out)
    counter = tmp_path / "blended"
    code, stderr = run_killed(job, chunk_px, kill_at, signum, counter)
    blended = int(counter.read_text())
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # a stop cleans up as Ctrl-C: one line, no file left in the output folder
        assert code == 128 + signum, stderr[-2000:]
        assert stderr.strip().splitlines()[-1].startswith(f"stopped by {signal.Signals(signum).name}")
        assert not out.exists()  # the job created it: nothing of this run is left
    stores = list((Path(os.environ["TERRAFUSE_CACHE_DIR"]) / "resume").iterdir())
    assert len(stores) == 1
    assert (stores[0] / "journal.json").is_file()

    model = CountingModel()
    use_stand_in(monkeypatch, model)
    monkeypatch.setattr(segment_module, "CHUNK_PX", chunk_px)
    result = run_job("segment", job, Progress())
    whole = tile_windows(rasterio.windows.Window(0, 0, 640, 640), 64, 16, (640, 640))
    assert len(whole) == 169
    row_tiles = 13
    # At most one row of tiles (and the batch in flight) is predicted again.
    assert blended - row_tiles - job["batch_size"] < result["tiles_resumed"] <= blended
    assert model.tiles == result["tile_predictions"] == sum(
        len(tiles_touching(whole, chunk)) for chunk in chunk_windows(rasterio.windows.Window(0, 0, 640, 640),
                                                                      chunk_px)) - result["tiles_resumed"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["classes.tif", "classes.tif.aux.xml", "classes.qml", "classes.gpkg", "classes_polygons.qml",
         "confidence.tif", "confidence.qml", "uncertainty.tif", "uncertainty.qml"])  # no lock, no partial
    assert not list((Path(os.environ["TERRAFUSE_CACHE_DIR"]) / "resume").iterdir())  # the store is gone

    use_stand_in(monkeypatch, CountingModel())
    run_job("segment", params(head, image, tmp_path / "whole"), Progress())
    assert_same_outputs(tmp_path / "whole", out)


def test_a_stopped_run_of_another_job_is_not_resumed_and_fresh_starts_again(
        image: Path, head: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"

    class Failing(CountingModel):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if self.tiles > 40:
                raise RuntimeError("the model broke")
            return super().forward(images)

    use_stand_in(monkeypatch, Failing())
    monkeypatch.setattr(segment_module, "CHUNK_PX", 256)
    with pytest.raises(RuntimeError):
        run_job("segment", params(head, image, out), Progress())
    # Another job (other pixels: another overlap) never reads that store.
    model = CountingModel()
    use_stand_in(monkeypatch, model)
    result = run_job("segment", params(head, image, tmp_path / "other", overlap_px=8), Progress())
    assert result["tiles_resumed"] == 0
    assert model.tiles == result["tile_predictions"]
    # The same job with fresh starts from the first tile, and its store goes when it completes.
    model = CountingModel()
    use_stand_in(monkeypatch, model)
    result = run_job("segment", params(head, image, out, fresh=True), Progress())
    assert result["tiles_resumed"] == 0
    assert model.tiles == result["tile_predictions"] > result["tiles"]  # chunk borders: some tiles twice
    assert not list((Path(os.environ["TERRAFUSE_CACHE_DIR"]) / "resume").iterdir())


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
        if how == "cancel" and done > 40:
            progress.cancel()

    progress = Progress(cancel_after_two_chunks, min_interval_s=0)
    with pytest.raises(JobCancelled if how == "cancel" else RuntimeError):
        run_job("segment", params(head, image, out), progress)
    assert not out.exists()  # the job created the folder: it goes too
    # The finished tiles are kept in the resume store: the same job goes on from them.
    model = CountingModel()
    use_stand_in(monkeypatch, model)
    result = run_job("segment", params(head, image, out), Progress())
    assert result["chunks_resumed"] >= 1
    assert result["tiles_resumed"] >= 30
    assert model.tiles == result["tile_predictions"]
