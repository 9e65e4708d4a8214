"""Jobs on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``, every node on 127.0.0.1, of
different sizes), whose workers cannot import the driver's checkout: the nodes start from an empty folder
without the checkout on ``PYTHONPATH``, and a node's cache is not the driver's. The backend, the bundled
SkySense and the user's head with its backbone folder reach the nodes through Ray (runtime environment and
object store); the outputs are those of a single-machine run. Also: an actor that cannot load its model, a
node lost mid-job, an address where nothing answers, a job waiting for room, two jobs at once.

CPU float sums depend on the number of threads: every run here uses one thread per actor, as the references.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_bounds

from backend.errors import JobCancelled, UserError
from backend.inference.cluster import _LOOPBACK_SWITCH, RayPredictor, _loopback_constants
from backend.models.skysense.config import S2_BANDS
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.conftest import write_untrained_head
from tests.backend.inference.conftest import record_predictors
from tests.backend.inference.test_cluster import is_loopback, listening_addresses, ray_processes
from tests.backend.rasters import write_raster
from tests.backend.segment_stand_in import smooth_image

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]
BACKEND_PYTHON = sys.executable
SEGMENT_OUTPUTS = ("classes.tif", "confidence.tif")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user head on a tiny backbone folder (both on the driver's disk only), a raster, a Sentinel-2 pair."""
    folder = tmp_path_factory.mktemp("nodes-material")
    head = write_untrained_head(folder)
    image = write_raster(folder / "image.tif", smooth_image(72, 104, seed=5))
    utm, box = CRS.from_epsg(32632), (500000.0, 4980000.0, 500400.0, 4980360.0)
    rng = np.random.default_rng(1)
    s2 = []
    for date in ("20230415", "20230610"):
        data = ((1 + 0.2 * rng.standard_normal((10, 36, 40))) * 2500).astype(np.uint16)
        path = folder / f"S2_{date}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=40, height=36, count=10, dtype="uint16", crs=utm,
                           transform=from_bounds(*box, 40, 36)) as dst:
            dst.write(data)
            for i, band in enumerate(S2_BANDS, start=1):
                dst.set_band_description(i, band)
        s2.append(str(path))
    return {"head": head, "image": image, "s2": ",".join(s2), "folder": folder}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A head without CPUs and a node of 2 CPUs, on 127.0.0.1, started from an empty folder, without the
    checkout on ``PYTHONPATH`` and with a cache folder of their own (``nodes.node_cache``)."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("nodes")
    with socket.socket() as free:  # a port for the head's Ray Client server (ray://)
        free.bind(("127.0.0.1", 0))
        client_port = free.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(_LOOPBACK_SWITCH, "0")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("PYTHONPATH", raising=False)
        patch.setenv("TERRAFUSE_CACHE_DIR", str(root / "node-cache"))
        patch.chdir(root)
        _loopback_constants(True)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "ray_client_server_port": client_port})
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        cluster.node_cache = root / "node-cache"
        cluster.start_env = dict(os.environ)
        cluster.start_dir = root
        cluster.client_address = f"ray://127.0.0.1:{client_port}"
        _loopback_constants(False)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def one_thread(job: str, params: dict[str, Any]) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_job(job, params, Progress())
    finally:
        torch.set_num_threads(threads)


def segment_params(material: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    return {"image": str(material["image"]), "model": str(material["head"]), "out": str(out), "overlap_px": 8,
            "batch_size": 2, "polygons": False, **extra}


def read(folder: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays = {}
    for name in names:
        with rasterio.open(folder / name) as src:
            arrays[name] = src.read()
    return arrays


def assert_same(a: Path, b: Path, names: tuple[str, ...]) -> None:
    first, second = read(a, names), read(b, names)
    for name in names:
        assert np.array_equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def segment_reference(material: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("segment-reference") / "out"
    one_thread("segment", segment_params(material, out))
    return out


def assert_received_not_shared(predictor: RayPredictor, nodes: Any) -> None:
    """The actor imported the backend Ray unpacked on its node, not the checkout, and loaded the
    files it received under the node's cache."""
    first = predictor.first_actor
    code = Path(first["actor_code"])
    assert ROOT not in code.parents, code
    assert "runtime_resources" in code.parts, code
    for path in first["actor_files"].values():
        assert nodes.node_cache in Path(path).parents, path


def test_a_user_head_and_its_backbone_folder_reach_nodes_that_cannot_see_the_driver(
        nodes: Any, material: dict[str, Path], segment_reference: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = record_predictors(monkeypatch, threads=1)
    result = run_job("segment", segment_params(material, tmp_path / "out", cluster=nodes.address), Progress())
    assert_same(segment_reference, tmp_path / "out", SEGMENT_OUTPUTS)
    (predictor,) = recorded
    assert_received_not_shared(predictor, nodes)
    assert set(predictor.first_actor["actor_files"]) == {"model", "backbone"}  # the head and its backbone
    assert result["cluster"]["actors"] == 2  # the 2-CPU node's room, one thread each
    assert result["cluster"]["actors_lost"] == 0
    assert result["cluster"]["lost"] == []
    assert result["provenance"]["backbone"] == "backbone"  # the folder's name, kept on the node


@pytest.mark.slow
def test_a_ray_client_address_runs_the_job_as_the_head_address_does(nodes: Any, material: dict[str, Path],
                                                                     segment_reference: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Ray Client (the pinned client extra): the arguments are unpickled on the client server too,
    which must not need torch; the files travel the same way."""
    record_predictors(monkeypatch, threads=1)
    result = run_job("segment", segment_params(material, tmp_path / "out", cluster=nodes.client_address),
                     Progress())
    assert_same(segment_reference, tmp_path / "out", SEGMENT_OUTPUTS)
    assert result["cluster"]["address"] == nodes.client_address
    assert result["cluster"]["actors"] == 2


def test_the_bundled_skysense_maps_on_the_nodes_as_on_one_machine(nodes: Any, material: dict[str, Path],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"s2": material["s2"], "out": str(tmp_path / "one"), "tile_px": 20, "batch_size": 2}
    one_thread("prototypes", params)  # the default model: the bundled terrafuse-tiny-skysense
    recorded = record_predictors(monkeypatch, threads=1, actors=2)
    result = run_job("prototypes", {**params, "out": str(tmp_path / "cluster"), "cluster": nodes.address},
                     Progress())
    names = ("prototypes.tif", "prototype_similarity.tif")
    single, clustered = read(tmp_path / "one", names), read(tmp_path / "cluster", names)
    assert np.array_equal(single["prototypes.tif"], clustered["prototypes.tif"])
    assert np.allclose(single["prototype_similarity.tif"], clustered["prototype_similarity.tif"], rtol=0, atol=1e-6,
                       equal_nan=True)
    (predictor,) = recorded
    assert_received_not_shared(predictor, nodes)
    assert predictor.first_actor["actor_files"] == {}  # bundled: it came with the code, checked by sha256
    assert result["cluster"]["batches_submitted"] == 2


def test_everything_of_the_cluster_listens_on_the_loopback_interface_only(nodes: Any) -> None:
    addresses = listening_addresses(ray_processes())
    assert len(addresses) >= 4  # GCS, two raylets, object managers...
    assert all(is_loopback(address) for address, _ in addresses), addresses


def test_an_actor_that_cannot_load_its_model_stops_the_job_with_its_own_error_at_once(
        nodes: Any, material: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from backend.models.segmenter import HEAD_WEIGHTS_NAME

    head = tmp_path / "head"
    shutil.copytree(material["head"], head)
    (head / HEAD_WEIGHTS_NAME).write_bytes(b"not a safetensors file")  # the driver only reads its config
    recorded = record_predictors(monkeypatch, threads=1)
    started = time.monotonic()
    with pytest.raises(UserError) as raised:
        run_job("segment", segment_params(material, tmp_path / "out", model=str(head), cluster=nodes.address),
                Progress())
    seconds = time.monotonic() - started
    (predictor,) = recorded
    assert "Ray" not in str(raised.value), raised.value  # the load's own error, not Ray's account of it
    assert f"{head / HEAD_WEIGHTS_NAME} are corrupt" in str(raised.value)  # named by the driver's path
    assert predictor.started_actors == 2  # the plan's actors; none started after the failure
    assert seconds < 60, seconds  # one model load and the connection, not one load per replacement
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", ["{host}:{port}", "ray://{host}:{port}"])
def test_a_closed_port_fails_at_once_with_one_line_and_exit_2(form: str, material: dict[str, Path],
                                                               tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port of this machine's loopback that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = form.format(host="127.0.0.1", port=port)
    done, seconds = command_line(material, tmp_path, address)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()  # one line
    assert line.startswith(f"error: Nothing answers at 127.0.0.1:{port} (connection refused)"), line
    assert seconds < 30, seconds  # the interpreter and the imports; the refusal itself is immediate


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_port_that_never_answers_fails_within_the_connect_timeout(scheme: str, material: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, says nothing: not a Ray head
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"{scheme}127.0.0.1:{silent.getsockname()[1]}"
        done, seconds = command_line(material, tmp_path, address, TERRAFUSE_RAY_CONNECT_TIMEOUT_S="4")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()  # one line, no message of Ray's
    assert line.startswith(f"error: The Ray cluster at '{address}' did not answer within 4 s"), line
    assert seconds < 40, seconds


def command_line(material: dict[str, Path], tmp_path: Path, address: str, **env: str) -> tuple[Any, float]:
    started = time.monotonic()
    done = subprocess.run(
        [BACKEND_PYTHON, "-m", "backend", "--quiet", "segment", "--image", str(material["image"]), "--model",
         str(material["head"]), "--out", str(tmp_path / "out"), "--cluster", address],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False)
    return done, time.monotonic() - started


@pytest.mark.slow
def test_a_job_waiting_for_room_says_so_and_is_cancelled_at_once(nodes: Any, material: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    blocker = hold_the_cpus(nodes, 2)
    try:
        messages: list[str] = []
        cancelled_at: list[float] = []

        def cancel_when_waiting(done: int, total: int, message: str) -> None:
            messages.append(message)
            if message.startswith("waiting for room") and not cancelled_at:
                cancelled_at.append(time.monotonic())
                progress.cancel()

        progress = Progress(cancel_when_waiting, min_interval_s=0)
        with pytest.raises(JobCancelled):
            run_job("segment", segment_params(material, tmp_path / "out", cluster=nodes.address, threads=1),
                    progress)
        assert cancelled_at, messages
        assert time.monotonic() - cancelled_at[0] < 5  # a poll and the actors' end
        assert "2 actors of 1 CPU" in next(m for m in messages if m.startswith("waiting for room"))
    finally:
        blocker.kill()
        blocker.wait()


def hold_the_cpus(nodes: Any, cpus: int) -> subprocess.Popen:
    """Another driver whose actor holds ``cpus`` CPUs of the cluster until its process is killed."""
    script = ("import sys, time, ray\n"
              "ray.init(address=sys.argv[1], log_to_driver=False)\n"
              f"@ray.remote(num_cpus={cpus})\n"
              "class Hold:\n    def ping(self):\n        return 1\n"
              "hold = Hold.remote()\nray.get(hold.ping.remote())\nprint('holding', flush=True)\ntime.sleep(600)\n")
    process = subprocess.Popen([BACKEND_PYTHON, "-c", script, nodes.address], cwd=nodes.start_dir,
                               env={**nodes.start_env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    return process


@pytest.mark.slow
def test_two_jobs_share_the_cluster(nodes: Any, material: dict[str, Path], segment_reference: Path,
                                    tmp_path: Path) -> None:
    """Two drivers at once, each asking for both CPUs: one runs, the other waits for room (and says so) or
    takes what is left; both write the single-machine outputs and pure JSON on stdout."""
    jobs = []
    for name in ("a", "b"):
        command = [BACKEND_PYTHON, "-m", "backend", "segment", "--image", str(material["image"]), "--model",
                   str(material["head"]), "--out", str(tmp_path / name), "--overlap-px", "8", "--batch-size", "2",
                   "--no-polygons", "--cluster", nodes.address, "--actors", "2", "--threads", "1"]
        jobs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = [job.communicate(timeout=600) for job in jobs]
    for job, (stdout, stderr), name in zip(jobs, outcomes, ("a", "b")):
        assert job.returncode == 0, stderr[-3000:]
        assert json.loads(stdout)["cluster"]["actors"] == 2
        assert_same(segment_reference, tmp_path / name, SEGMENT_OUTPUTS)


@pytest.mark.slow
def test_a_node_lost_mid_job_has_its_batches_redone_on_the_others(nodes: Any, material: dict[str, Path],
                                                                  segment_reference: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs last: it removes a node. A 1-CPU node joins; at the first tile, the node of the actor with the
    most batches out is removed; the job ends with the single-machine outputs and says what it lost."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PYTHONPATH",):
            patch.delenv(name, raising=False)
        patch.setenv("TERRAFUSE_CACHE_DIR", str(nodes.node_cache))
        patch.setenv(_LOOPBACK_SWITCH, "0")
        patch.chdir(nodes.start_dir)
        extra = nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes()
    recorded = record_predictors(monkeypatch, threads=1, actors=3, in_flight=2)
    removed: list[str] = []

    def remove_the_busiest_node(done: int, total: int, message: str) -> None:
        if removed or not message.startswith("tile "):
            return
        (predictor,) = recorded
        number, pending = max(predictor.pending_per_actor().items(), key=lambda item: item[1])
        node_id = predictor.actor_node(number)
        node = next((n for n in [extra, *nodes.worker_nodes] if n.node_id == node_id), None)
        if pending and node is not None:
            removed.append(node_id)
            nodes.remove_node(node, allow_graceful=False)

    result = run_job("segment", segment_params(material, tmp_path / "out", cluster=nodes.address),
                     Progress(remove_the_busiest_node, min_interval_s=0))
    assert removed
    assert result["cluster"]["actors_lost"] >= 1
    assert result["cluster"]["batches_resubmitted"] >= 1
    # Lost: the actors of the removed node, and perhaps a replacement placed there before Ray knew it was
    # gone (it never held its model, so its node is not known: "").
    assert {lost["node"] for lost in result["cluster"]["lost"]} - {""} == set(removed)
    assert_same(segment_reference, tmp_path / "out", SEGMENT_OUTPUTS)
