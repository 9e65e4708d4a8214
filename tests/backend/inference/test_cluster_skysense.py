"""The SkySense jobs (classify, prototypes) on a local Ray instance (loopback only) write the outputs of a
single-machine run: a tiny SkySense with a head, saved as a folder, on a two-date Sentinel-2 series.

CPU float sums depend on the number of threads, so both the single-machine reference and the driver of the
cluster run use one thread, as each of the two actors does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from rasterio.crs import CRS
from rasterio.transform import from_bounds

from backend.inference.cluster import RayPredictor, RaySession
from backend.models.skysense import SkySense
from backend.models.skysense.config import S2_BANDS
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.inference.conftest import record_predictors
from tests.backend.models.skysense.tiny import CLASSES, micro_config

pytest.importorskip("ray")

UTM = CRS.from_epsg(32632)
#: 400 m x 360 m near Milan: 40 x 36 cells at 10 m, four tiles of 20 cells (the lower two cropped).
BOX = (500000.0, 4980000.0, 500400.0, 4980360.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two Sentinel-2 dates (a dark west half, a bright east half, noise), a tiny SkySense with an untrained
    head and three polygons, one of them across two tiles."""
    root = tmp_path_factory.mktemp("skysense-cluster")
    rng = np.random.default_rng(0)
    s2 = []
    for date in ("20230415", "20230610"):
        halves = np.where(np.arange(40)[None, None, :] < 20, 0.3, 1.0) * np.linspace(0.5, 1.5, 10)[:, None, None]
        data = ((halves + 0.1 * rng.standard_normal((10, 36, 40))) * 3000).astype(np.uint16)
        path = root / f"S2_{date}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=40, height=36, count=10, dtype="uint16", crs=UTM,
                           transform=from_bounds(*BOX, 40, 36)) as dst:
            dst.write(data)
            for i, band in enumerate(S2_BANDS, start=1):
                dst.set_band_description(i, band)
        s2.append(str(path))
    torch.manual_seed(0)
    model = SkySense(micro_config(classes=CLASSES)).save_pretrained(root / "model")
    boxes = [(500020, 4980020, 500150, 4980150), (500150, 4980100, 500300, 4980300), (500300, 4980250, 500390, 4980350)]
    polygons = root / "fields.gpkg"
    pyogrio.raw.write(str(polygons), shapely.to_wkb(np.asarray([shapely.box(*b) for b in boxes], dtype=object)),
                      [np.array(["a", "b", "c"], dtype=object)], ["field"], driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32632")
    return {"s2": ",".join(s2), "model": str(model), "polygons": str(polygons)}


def params(scene: dict[str, str], out: Path, **extra: Any) -> dict[str, Any]:
    return {"s2": scene["s2"], "model": scene["model"], "out": str(out), "tile_px": 20, "batch_size": 2, **extra}


def one_thread_run(job: str, job_params: dict[str, Any]) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_job(job, job_params, Progress())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RayPredictor]:
    """Two actors of one torch thread each whatever the machine's cores (the reference's thread count),
    each instance kept for the test to look at."""
    return record_predictors(monkeypatch, actors=2, threads=1)


def read_rasters(folder: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    rasters = {}
    for name in names:
        with rasterio.open(folder / name) as src:
            rasters[name] = src.read()
    return rasters


def assert_ran_on_two_actors(result: dict[str, Any], recorded: list[RayPredictor]) -> None:
    (predictor,) = recorded
    assert result["provenance"]["device"].startswith("Ray")
    assert "2 actors on cpu, 1 thread each" in result["provenance"]["device"]
    assert result["provenance"]["cluster"]["actors"] == 2
    assert sum(predictor.stats.per_actor.values()) == predictor.stats.submitted == 2  # four tiles, two a batch
    assert not predictor.pending_per_actor()  # closed: no actor left


def test_classify_on_the_cluster_writes_the_single_machine_classes(
        local_ray: RaySession, scene: dict[str, str], recorded: list[RayPredictor], tmp_path: Path) -> None:
    reference = one_thread_run("classify", params(scene, tmp_path / "one", polygons=scene["polygons"]))
    assert not recorded  # no cluster parameter: in this process
    result = one_thread_run("classify", params(scene, tmp_path / "ray", polygons=scene["polygons"], cluster="local"))
    assert_ran_on_two_actors(result, recorded)

    names = ("classes.tif", "confidence.tif")
    single, clustered = read_rasters(tmp_path / "one", names), read_rasters(tmp_path / "ray", names)
    for name in names:
        assert np.array_equal(single[name], clustered[name]), name
    assert len(np.unique(single["classes.tif"])) > 1  # a map, not a constant
    assert result["class_pixels"] == reference["class_pixels"]
    _, _, _, one = pyogrio.raw.read(tmp_path / "one" / "classes.gpkg")
    meta, _, _, ray_fields = pyogrio.raw.read(tmp_path / "ray" / "classes.gpkg")
    assert "class_name" in meta["fields"]
    for name, a, b in zip(meta["fields"], one, ray_fields):  # the pooled features of the polygons, the same
        assert np.array_equal(a, b), name
    with rasterio.open(tmp_path / "ray" / "classes.tif") as src:
        assert json.loads(src.tags()["TERRAFUSE_PROVENANCE"])["device"] == result["provenance"]["device"]


def test_prototypes_learned_on_the_area_map_the_same_on_the_cluster(
        local_ray: RaySession, scene: dict[str, str], recorded: list[RayPredictor], tmp_path: Path) -> None:
    learn = {"learn": "prototypes", "epochs": 1}
    reference = one_thread_run("prototypes", params(scene, tmp_path / "one", **learn))
    result = one_thread_run("prototypes", params(scene, tmp_path / "ray", cluster="local", **learn))
    assert_ran_on_two_actors(result, recorded)
    assert result["learned_tiles"] == reference["learned_tiles"] == 4

    names = ("prototypes.tif", "prototype_similarity.tif", "prototype_similarities.tif")
    single, clustered = read_rasters(tmp_path / "one", names), read_rasters(tmp_path / "ray", names)
    assert np.array_equal(single["prototypes.tif"], clustered["prototypes.tif"])
    assert np.array_equal(single["prototype_similarities.tif"], clustered["prototype_similarities.tif"])
    assert np.allclose(single["prototype_similarity.tif"], clustered["prototype_similarity.tif"], rtol=0, atol=1e-6,
                       equal_nan=True)
    document = json.loads((tmp_path / "ray" / "prototypes.json").read_text())
    assert document["regions"] == json.loads((tmp_path / "one" / "prototypes.json").read_text())["regions"]
    # The actors mapped with the learned prototypes (a scratch copy, gone now), not those of the folder.
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    one_thread_run("prototypes", params(scene, tmp_path / "unlearned"))  # learning changed the map
    with rasterio.open(tmp_path / "unlearned" / "prototype_similarity.tif") as src:
        assert not np.allclose(src.read(), clustered["prototype_similarity.tif"], equal_nan=True)


@pytest.mark.slow  # about 10 s more, on top of the ~30 s the two tests above take in the default suite
def test_a_configuration_with_random_weights_is_rebuilt_alike_in_the_actors(
        local_ray: RaySession, scene: dict[str, str], recorded: list[RayPredictor], tmp_path: Path) -> None:
    """No folder to share: each actor builds the configuration from the job's seed, as the driver did."""
    job = {"model": "skysense-tiny", "seed": 3, "similarities": False}
    one_thread_run("prototypes", params(scene, tmp_path / "one", **job))
    result = one_thread_run("prototypes", params(scene, tmp_path / "ray", cluster="local", **job))
    assert_ran_on_two_actors(result, recorded)
    names = ("prototypes.tif", "prototype_similarity.tif")
    single, clustered = read_rasters(tmp_path / "one", names), read_rasters(tmp_path / "ray", names)
    assert np.array_equal(single["prototypes.tif"], clustered["prototypes.tif"])
    assert np.allclose(single["prototype_similarity.tif"], clustered["prototype_similarity.tif"], rtol=0, atol=1e-6,
                       equal_nan=True)
