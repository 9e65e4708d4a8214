"""The segment job on a local Ray instance (2 CPUs, loopback only): the single-machine outputs, an actor
killed mid-job whose batches are redone, a killed driver resumed from its journal.

A real SatDiFuser head on a tiny random backbone runs in the actors. CPU float sums depend on the number
of threads, so the single-machine reference runs with one thread, as each actor does here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from backend.inference.cluster import RayPredictor, RaySession
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.conftest import write_untrained_head
from tests.backend.inference.conftest import record_predictors
from tests.backend.rasters import write_raster
from tests.backend.segment_stand_in import smooth_image

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]
OUTPUTS = ("classes.tif", "confidence.tif", "uncertainty.tif")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny backbone, an untrained head on it (32 px tiles) and a 104 x 152 px raster."""
    folder = tmp_path_factory.mktemp("cluster")
    head = write_untrained_head(folder)
    image = write_raster(folder / "image.tif", smooth_image(104, 152, seed=3))
    return {"head": head, "image": image, "cache": folder / "cache"}


def params(material: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    return {"image": str(material["image"]), "model": str(material["head"]), "out": str(out), "overlap_px": 8,
            "batch_size": 2, "uncertainty": True, **extra}


def single_machine_run(material: dict[str, Path], out: Path, chunk_px: int | None = None) -> Path:
    """The job in this process, on one thread (with ``chunk_px`` chunks: a chunk's last batch may hold
    fewer tiles, and a convolution's float sums may depend on the batch size)."""
    from backend.jobs import segment as segment_module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TERRAFUSE_CACHE_DIR", str(material["cache"]))
            if chunk_px:
                patch.setattr(segment_module, "CHUNK_PX", chunk_px)
            run_job("segment", params(material, out), Progress())
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def reference(material: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-machine run."""
    return single_machine_run(material, tmp_path_factory.mktemp("reference") / "out")


@pytest.fixture(scope="module")
def ray_env(material: dict[str, Path]) -> dict[str, str]:
    """The local Ray's workers (``local_ray`` in conftest.py) inherit the test's cache folder."""
    return {"TERRAFUSE_CACHE_DIR": str(material["cache"])}


def read_outputs(folder: Path) -> dict[str, np.ndarray]:
    rasters = {}
    for name in OUTPUTS:
        with rasterio.open(folder / name) as dst:
            rasters[name] = dst.read(1)
    return rasters


def assert_same_outputs(a: Path, b: Path) -> None:
    first, second = read_outputs(a), read_outputs(b)
    for name in OUTPUTS:
        assert np.array_equal(first[name], second[name]), name


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RayPredictor]:
    """Two actors per run, every RayPredictor kept."""
    return record_predictors(monkeypatch, actors=2)


def test_the_cluster_run_writes_the_single_machine_outputs(local_ray: RaySession, material: dict[str, Path],
                                                           reference: Path, recorded: list[RayPredictor],
                                                           tmp_path: Path) -> None:
    result = run_job("segment", params(material, tmp_path / "out", cluster="local"), Progress())
    assert_same_outputs(reference, tmp_path / "out")
    (predictor,) = recorded
    assert result["device"].startswith("Ray")
    assert "2 actors on cpu, 1 thread each" in result["device"]
    assert result["provenance"]["cluster"]["actors"] == 2
    assert predictor.stats.submitted == sum(predictor.stats.per_actor.values())
    # Which actors worked depends on which was ready first (under load one may take every batch): only
    # that the work went to this job's actors is certain.
    assert set(predictor.stats.per_actor) <= {0, 1}
    assert not predictor.pending_per_actor()  # closed: no actor left
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert json.loads(dst.tags()["TERRAFUSE_PROVENANCE"])["device"] == result["device"]


def test_an_actor_killed_mid_job_has_its_batches_redone(local_ray: RaySession, material: dict[str, Path],
                                                        reference: Path, recorded: list[RayPredictor],
                                                        tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_the_busiest_actor_after_the_first_tiles(done: int, total: int, message: str) -> None:
        if recorded and not killed and message.startswith("tile "):
            (predictor,) = recorded
            number, pending = max(predictor.pending_per_actor().items(), key=lambda item: item[1])
            assert pending > 0
            ray.kill(predictor.actor_handle(number))
            killed.append(number)

    result = run_job("segment", params(material, tmp_path / "out", cluster="local"),
                     Progress(kill_the_busiest_actor_after_the_first_tiles, min_interval_s=0))
    (predictor,) = recorded
    assert killed
    assert predictor.stats.actors_lost == 1
    assert predictor.stats.actors_replaced == 1
    assert predictor.stats.resubmitted >= 1
    batches = -(-result["tile_predictions"] // 2)  # per chunk, but one chunk here
    assert sum(predictor.stats.per_actor.values()) == batches  # each batch's result taken once
    assert predictor.stats.submitted == batches + predictor.stats.resubmitted
    assert_same_outputs(reference, tmp_path / "out")


@pytest.mark.slow
def test_a_cancel_mid_job_stops_the_actors_and_leaves_nothing(local_ray: RaySession, material: dict[str, Path],
                                                              recorded: list[RayPredictor], tmp_path: Path) -> None:
    from backend.errors import JobCancelled

    def cancel_at_the_first_tile(done: int, total: int, message: str) -> None:
        if message.startswith("tile "):
            progress.cancel()

    progress = Progress(cancel_at_the_first_tile, min_interval_s=0)
    with pytest.raises(JobCancelled):
        run_job("segment", params(material, tmp_path / "out", cluster="local"), progress)
    (predictor,) = recorded
    assert not predictor.pending_per_actor()  # every actor killed
    assert predictor.stats.submitted <= 2 * predictor.in_flight + 1 < 12  # read ahead a little, of 12 batches
    assert not (tmp_path / "out").exists()


def test_ray_listens_on_the_loopback_interface_only(local_ray: RaySession) -> None:
    addresses = listening_addresses(ray_processes())
    assert addresses  # the GCS, the raylet and the driver's own core worker at least
    assert all(is_loopback(address) for address, _ in addresses), addresses


def test_a_ray_worker_never_imports_qgis(local_ray: RaySession) -> None:
    @ray.remote
    def imported() -> list[str]:
        import backend.inference.cluster  # noqa: F401 - what an actor imports

        return sorted(m for m in sys.modules if m.split(".")[0] in ("qgis", "PyQt5"))

    assert ray.get(imported.remote()) == []


def test_a_wrong_address_is_a_user_error() -> None:
    from backend.errors import UserError

    with pytest.raises(UserError, match="Give a Ray cluster address"):
        RaySession.open("")


KILLED_DRIVER = """
import json, os, sys
from backend.jobs import segment
from backend.progress import Progress
from backend.worker import run_job

segment.CHUNK_PX = 64
params = json.loads(sys.argv[1])
import glob

def kill_after_two_chunks(done, total, message):
    for journal in glob.glob(os.path.join(os.environ["TERRAFUSE_CACHE_DIR"], "resume", "*", "journal.json")):
        chunks = json.load(open(journal))["chunks"].values()
        if sum(chunk["done"] for chunk in chunks) >= 2:
            os._exit(9)  # as a killed driver: no cleanup of any kind

run_job("segment", params, Progress(kill_after_two_chunks, min_interval_s=0))
"""


@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_windows_written(material: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.jobs import segment as segment_module

    out = tmp_path / "out"
    job = params(material, out, cluster="local", threads=1)  # one thread per actor, as the reference
    # The killed driver leaves its Ray folder behind: in a short folder of the test's (socket paths
    # must stay under 108 bytes), removed at the end.
    ray_tmp = tempfile.mkdtemp(prefix="tf-test-")
    env = {**os.environ, "TERRAFUSE_CACHE_DIR": str(material["cache"]), "TMPDIR": ray_tmp}
    try:
        killed = subprocess.run([sys.executable, "-c", KILLED_DRIVER, json.dumps(job)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600, check=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # nothing under a final name

    monkeypatch.setenv("TERRAFUSE_CACHE_DIR", str(material["cache"]))
    monkeypatch.setattr(segment_module, "CHUNK_PX", 64)
    resumed = run_job("segment", job, Progress())
    per_chunk = tiles_per_chunk()
    assert resumed["chunks"] == len(per_chunk)
    assert resumed["chunks_resumed"] >= 2
    assert resumed["tiles_resumed"] >= sum(per_chunk[:2])  # chunks 0 and 1 (and finished rows after) not redone
    assert resumed["tile_predictions"] == sum(per_chunk) - resumed["tiles_resumed"]
    assert_same_outputs(single_machine_run(material, tmp_path / "reference", chunk_px=64), out)


def tiles_per_chunk() -> list[int]:
    """Tiles each 64 px chunk of the raster predicts (tiles on chunk borders count in each)."""
    from backend.raster.chunks import chunk_windows, tiles_touching
    from backend.raster.tiles import tile_windows

    window = rasterio.windows.Window(0, 0, 152, 104)
    tiles = tile_windows(window, 32, 8, (104, 152))
    return [len(tiles_touching(tiles, chunk)) for chunk in chunk_windows(window, 64)]


# -- the sockets of this process and its descendants (the local Ray's GCS, raylet and workers) ---------


def ray_processes() -> set[int]:
    """This process and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def listening_addresses(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            found.append((decode_address(address_hex, width), int(port_hex, 16)))
    return found


def decode_address(text: str, width: int) -> str:
    raw = bytes.fromhex(text)
    # /proc/net/tcp{,6} write each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.IPv6Address(raw) if width == 16 else ipaddress.IPv4Address(raw))


def is_loopback(text: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1); never 0.0.0.0 or ::."""
    address = ipaddress.ip_address(text)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_the_socket_check_tells_loopback_from_every_interface() -> None:
    assert is_loopback(decode_address("0100007F", 4))  # 127.0.0.1
    assert is_loopback(decode_address("0000000000000000FFFF00000100007F", 16))  # ::ffff:127.0.0.1
    assert not is_loopback(decode_address("00000000", 4))  # 0.0.0.0
    assert not is_loopback(decode_address("00000000000000000000000000000000", 16))  # ::
