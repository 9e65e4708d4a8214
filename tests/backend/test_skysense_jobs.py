"""The SkySense jobs (classify, prototypes) on small synthetic Sentinel-2, Sentinel-1 and high-resolution
rasters of one place in three CRSs, with a tiny SkySense saved as a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_bounds
from rasterio.warp import transform_bounds, transform_geom
from safetensors.torch import load_file

from backend import jobs
from backend.errors import JobCancelled, UserError
from backend.jobs.classify import run_classify
from backend.jobs.prototypes import run_prototypes
from backend.jobs.series import run_series
from backend.jobs.train_skysense import run_train_skysense
from backend.models.skysense import SkySense
from backend.models.skysense.config import S2_BANDS
from backend.progress import Progress
from tests.backend.models.skysense.tiny import CLASSES, micro_config
from tests.conftest import BACKEND_PYTHON, ROOT

UTM = CRS.from_epsg(32632)
#: 400 m x 400 m near Milan, in UTM 32N: 40 x 40 Sentinel-2 pixels, one grid of 40 x 40 cells at 10 m.
BOX = (500000.0, 4980000.0, 500400.0, 4980400.0)


def _write(path: Path, data: np.ndarray, crs: CRS | None, bounds: tuple[float, ...],
           descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
           colorinterp: list[ColorInterp] | None = None) -> str:
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, crs=crs,
                       transform=from_bounds(*bounds, width, height)) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
        if colorinterp:
            dst.colorinterp = colorinterp
    return str(path)


def _pattern(shape: tuple[int, int, int], seed: int, scale: float) -> np.ndarray:
    """Two halves that differ (water-like west, brighter east) plus noise."""
    rng = np.random.default_rng(seed)
    count, height, width = shape
    halves = np.where(np.arange(width)[None, None, :] < width // 2, 0.3, 1.0)
    base = halves * np.linspace(0.5, 1.5, count)[:, None, None]
    return (base + 0.1 * rng.standard_normal(shape)) * scale


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scene")
    s2 = [_write(root / f"S2_{d}.tif", _pattern((10, 40, 40), i, 3000).astype(np.uint16), UTM, BOX, list(S2_BANDS))
          for i, d in enumerate(("20230415", "20230610", "20230805"))]
    geo = transform_bounds(UTM, CRS.from_epsg(4326), BOX[0] - 100, BOX[1] - 100, BOX[2] + 100, BOX[3] + 100)
    s1 = [_write(root / f"S1_{d}_grd.tif", _pattern((2, 30, 30), 10 + i, 0.05).astype(np.float32),
                 CRS.from_epsg(4326), geo, ["VV", "VH"]) for i, d in enumerate(("20230418", "20230612"))]
    merc = transform_bounds(UTM, CRS.from_epsg(3857), BOX[0] - 40, BOX[1] - 40, BOX[2] + 40, BOX[3] + 40)
    side = round((merc[2] - merc[0]) / 3.5)  # 3.5 CRS metres per pixel: read 3x finer than the 10 m grid
    hr = _write(root / "hr.tif", np.clip(_pattern((3, side, side), 20, 120), 0, 255).astype(np.uint8),
                CRS.from_epsg(3857), merc, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    torch.manual_seed(0)
    model_dir = root / "model"
    SkySense(micro_config(classes=CLASSES)).save_pretrained(model_dir)
    return {"root": root, "s2": s2, "s1": s1, "hr": hr, "model": str(model_dir)}


def _params(job: str, scene: dict[str, Any], out: Path, modalities: tuple[str, ...] = ("s2",),
            **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"model": scene["model"], "out": str(out)}
    if "hr" in modalities:
        raw["hr"] = scene["hr"]
    for m in ("s2", "s1"):
        if m in modalities:
            raw[m] = ",".join(scene[m])
    raw.update(extra)
    return jobs.get(job).bind(raw)


def _grid_of(path: str) -> tuple[CRS, tuple[float, ...], int, int]:
    with rasterio.open(path) as src:
        return src.crs, tuple(src.transform)[:6], src.width, src.height


@pytest.mark.parametrize("modalities", [("hr",), ("s2",), ("s2", "s1"), ("hr", "s2", "s1")])
def test_classify_any_modality_subset_writes_a_paletted_class_raster_on_the_grid(
        scene: dict[str, Any], tmp_path: Path, modalities: tuple[str, ...]) -> None:
    result = run_classify(_params("classify", scene, tmp_path / "out", modalities), Progress())
    classes = result["outputs"]["classes"]
    crs, transform, width, height = _grid_of(classes)
    # The grid is in the CRS of the first input (hr in EPSG:3857, else Sentinel-2 in UTM) at 10 m cells; a
    # high-resolution image alone gets cells of 2 x 2 of its pixels (about 1.8 CRS metres: about 7 m).
    expected = CRS.from_epsg(3857) if modalities[0] == "hr" else UTM
    with rasterio.open(scene["hr"]) as hr:
        gsd = 2 * min(hr.res) if modalities == ("hr",) else 10.0
    assert crs == expected
    assert transform[0] == pytest.approx(gsd)
    assert transform[4] == pytest.approx(-gsd)
    if expected == UTM:
        assert (width, height) == (40, 40)
        assert (transform[2], transform[5]) == (BOX[0], BOX[3])
    with rasterio.open(classes) as src:
        data = src.read(1)
        assert src.dtypes[0] == "uint8"
        assert src.nodata == 255
        assert src.colormap(1)[2][:3] == (0x33, 0xA0, 0x2C)
        assert src.tags()["CLASS_3"] == "built"
        assert json.loads(src.tags()["TERRAFUSE_PROVENANCE"])["job"] == "classify"
    assert set(np.unique(data)) <= {1, 2, 3, 255}
    assert (data != 255).mean() > 0.9
    assert Path(result["outputs"]["confidence"]).is_file()
    assert [layer["kind"] for layer in result["layers"]] == ["raster", "raster"]
    assert all(Path(layer["qml"]).is_file() for layer in result["layers"])
    provenance = result["provenance"]
    assert len(provenance["checkpoint_sha256"]) == 64
    assert sorted(provenance["inputs"]) == sorted(modalities)
    if "hr" in modalities:  # 3.5 m pixels read 3x finer than the 10 m grid; alone, 2 of them make a cell
        assert provenance["grid"]["hr_factor"] == (2 if modalities == ("hr",) else 3)
    if "s2" in modalities:
        assert provenance["inputs"]["s2"]["dates"] == ["2023-04-15", "2023-06-10", "2023-08-05"]
        assert provenance["inputs"]["s2"]["date_sources"] == ["filename"] * 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".partial")]


def test_classify_with_polygons_gives_one_row_per_polygon_with_top_k(scene: dict[str, Any], tmp_path: Path) -> None:
    wgs84 = CRS.from_epsg(4326)
    boxes = [(500020, 4980020, 500150, 4980150), (500250, 4980250, 500380, 4980380), (500100, 4980300, 500300, 4980360)]
    geoms = [shapely.geometry.shape(transform_geom(UTM, wgs84, shapely.geometry.mapping(shapely.box(*b))))
             for b in boxes]
    fields_path = str(tmp_path / "fields.gpkg")
    pyogrio.raw.write(fields_path, shapely.to_wkb(np.asarray(geoms, dtype=object)),
                      [np.array(["north", "east", "strip"], dtype=object)], ["field_name"], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:4326")
    result = run_classify(_params("classify", scene, tmp_path / "out", ("s2", "s1"), polygons=fields_path, top_k=2,
                                  confidence=False), Progress())
    _, _, _, table = pyogrio.raw.read(result["outputs"]["polygons"])
    meta = pyogrio.read_info(result["outputs"]["polygons"])
    fields = dict(zip(meta["fields"], table))
    assert meta["features"] == 3
    assert list(fields["field_name"]) == ["north", "east", "strip"]
    assert set(fields["class_name"]) <= {"water", "crop", "built"}
    assert set(fields["class_id"]) <= {1, 2, 3}
    assert np.all(fields["top1_probability"] >= fields["top2_probability"])
    assert np.all(fields["top1_probability"] + fields["top2_probability"] <= 1 + 1e-6)
    assert "top3_class" not in fields
    assert "confidence" not in result["outputs"]
    assert result["layers"][0]["kind"] == "vector"


def test_prototypes_write_index_similarity_and_nearest_classes(scene: dict[str, Any], tmp_path: Path) -> None:
    result = run_prototypes(_params("prototypes", scene, tmp_path / "out", ("s2",)), Progress())
    with rasterio.open(result["outputs"]["prototypes"]) as src:
        index = src.read(1)
        assert src.dtypes[0] == "uint8"
        assert len(src.colormap(1)) == 256
    with rasterio.open(result["outputs"]["similarity"]) as src:
        similarity = src.read(1)
        assert src.dtypes[0] == "float32"
    valid = index != 255
    assert valid.mean() > 0.9
    assert index[valid].max() < 16
    assert np.all(np.abs(similarity[valid]) <= 1.0 + 1e-5)
    document = json.loads(Path(result["outputs"]["json"]).read_text())
    assert len(document["palette"]) == 16
    region = document["regions"][0]
    # 9.0 E, 44.96 N on the tiny model's 8 x 8 grid of 22.5 x 45 degree cells: row 2, column 4.
    assert region["region"] == 2 * 8 + 4
    assert sum(p["pixels"] for p in region["prototypes"]) == int(valid.sum())
    assert {p["nearest_class"]["name"] for p in region["prototypes"]} <= {"water", "crop", "built"}
    # What an identify click reads: the similarity to every prototype of the cell's region, and the region.
    assert document["similarities"]["region_band"] == 17
    with rasterio.open(result["outputs"]["similarities"]) as src:
        every = src.read()
        assert (src.count, src.dtypes[0], src.nodata) == (17, "int16", -32768)
    scale = document["similarities"]["scale"]
    assert np.all(every[:16, valid].argmax(axis=0) == index[valid])
    assert np.allclose(every[:16, valid].max(axis=0) / scale, similarity[valid], atol=1.0 / scale)
    assert set(np.unique(every[16, valid])) == {2 * 8 + 4}
    assert np.all(every[:, ~valid] == -32768)
    assert "regions" not in result["outputs"]  # one region: no boundaries to draw


def test_prototype_regions_are_drawn_where_the_area_spans_two(scene: dict[str, Any], tmp_path: Path) -> None:
    """400 m around 0 E, 45 N: the tiny model's regions (22.5 x 45 degree cells) meet there, four of them."""
    mercator = CRS.from_epsg(3857)
    box = (-200.0, 5621300.0, 200.0, 5621700.0)  # 45 N is y = 5621521 in EPSG:3857
    s2 = _write(tmp_path / "S2_20230610.tif", _pattern((10, 40, 40), 4, 3000).astype(np.uint16), mercator, box,
                list(S2_BANDS))
    result = run_prototypes(_params("prototypes", scene, tmp_path / "out", (), s2=s2, tile_px=20), Progress())
    assert sorted(result["regions"]) == [11, 12, 19, 20]  # rows 1-2 (north, south of 45 N), columns 3-4
    meta, _, wkb, fields = pyogrio.raw.read(result["outputs"]["regions"])
    assert meta["crs"] == "EPSG:4326"
    cells = dict(zip(fields[0].tolist(), shapely.from_wkb(wkb)))
    assert sorted(cells) == [11, 12, 19, 20]
    assert cells[11].bounds[2] == pytest.approx(0.0)
    assert cells[12].bounds[0] == pytest.approx(0.0)
    assert cells[19].bounds[3] == pytest.approx(45.0)
    assert cells[11].bounds[1] == pytest.approx(45.0)
    assert result["layers"][0]["name"] == "SkySense prototype regions"
    assert Path(result["layers"][0]["qml"]).is_file()
    with rasterio.open(result["outputs"]["similarities"]) as src:
        region = src.read(src.count)
    assert [region[0, 0], region[0, -1], region[-1, 0], region[-1, -1]] == [11, 12, 19, 20]


def test_learning_prototypes_changes_them_and_saves_the_model(scene: dict[str, Any], tmp_path: Path) -> None:
    saved = tmp_path / "learned"
    result = run_prototypes(_params("prototypes", scene, tmp_path / "out", ("s2",), learn="prototypes", epochs=1,
                                    tile_px=20, save_model=str(saved)), Progress())
    assert result["learned_tiles"] == 4
    before = load_file(str(Path(scene["model"]) / "model.safetensors"))["prototypes.prototypes"]
    after = load_file(str(saved / "model.safetensors"))["prototypes.prototypes"]
    changed = (before != after).flatten(1).any(dim=1).nonzero().flatten().tolist()
    assert changed == [20]
    assert SkySense.from_pretrained(saved).config.classes == CLASSES


def test_a_config_name_maps_prototypes_with_random_weights_and_says_so(scene: dict[str, Any], tmp_path: Path) -> None:
    result = run_prototypes(_params("prototypes", scene, tmp_path / "out", ("s1",), model="skysense-tiny"), Progress())
    assert any("random weights" in w for w in result["warnings"])
    assert result["provenance"]["checkpoint_sha256"] is None
    assert "nearest_class" not in json.loads(Path(result["outputs"]["json"]).read_text())["regions"][0]["prototypes"][0]
    with pytest.raises(UserError, match="no classifier head"):
        run_classify(_params("classify", scene, tmp_path / "c", ("s1",), model="skysense-tiny"), Progress())


def test_no_modality_is_refused(scene: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least one input"):
        run_classify(_params("classify", scene, tmp_path / "out", ()), Progress())
    assert not (tmp_path / "out").exists()


def test_missing_dates_name_the_file(scene: dict[str, Any], tmp_path: Path) -> None:
    undated = _write(tmp_path / "sentinel2_scene.tif", _pattern((10, 40, 40), 1, 3000).astype(np.uint16), UTM, BOX,
                     list(S2_BANDS))
    params = _params("classify", scene, tmp_path / "out", ("s2",))
    params["s2"] = f"{scene['s2'][0]},{undated}"
    with pytest.raises(UserError, match="sentinel2_scene.tif"):
        run_classify(params, Progress())
    params["s2_dates"] = "2023-04-15"
    with pytest.raises(UserError, match="1 dates for 2 rasters"):
        run_classify(params, Progress())
    params["s2_dates"] = "2023-04-15,2023-05-01"
    assert Path(run_classify(params, Progress())["outputs"]["classes"]).is_file()


def test_dates_from_metadata_win_over_file_names(scene: dict[str, Any], tmp_path: Path) -> None:
    tagged = _write(tmp_path / "S1_20230101.tif", _pattern((2, 30, 30), 3, 0.05).astype(np.float32), UTM, BOX,
                    ["VV", "VH"], tags={"ACQUISITION_DATE": "2023-07-01T10:00:00"})
    result = run_prototypes(_params("prototypes", scene, tmp_path / "out", ("s1",), s1=tagged), Progress())
    assert result["provenance"]["inputs"]["s1"]["dates"] == ["2023-07-01"]
    assert result["provenance"]["inputs"]["s1"]["date_sources"] == ["metadata"]


def test_grids_that_do_not_overlap_are_refused(scene: dict[str, Any], tmp_path: Path) -> None:
    far = (BOX[0] + 5000, BOX[1], BOX[2] + 5000, BOX[3])
    elsewhere = _write(tmp_path / "S1_20230418.tif", _pattern((2, 30, 30), 3, 0.05).astype(np.float32), UTM, far,
                       ["VV", "VH"])
    with pytest.raises(UserError, match="do not overlap"):
        run_classify(_params("classify", scene, tmp_path / "out", ("s2",), s1=elsewhere), Progress())


def test_wrong_band_counts_and_missing_crs_are_refused(scene: dict[str, Any], tmp_path: Path) -> None:
    four = _write(tmp_path / "S2_20230415.tif", _pattern((4, 40, 40), 1, 3000).astype(np.uint16), UTM, BOX)
    with pytest.raises(UserError, match="lacks the bands"):
        run_classify(_params("classify", scene, tmp_path / "out", (), s2=four), Progress())
    with pytest.raises(UserError, match="the model reads 10"):
        run_classify(_params("classify", scene, tmp_path / "out", (), s2=four, s2_bands="1,2,3"), Progress())
    with pytest.raises(UserError, match="band 5 does not exist"):
        run_classify(_params("classify", scene, tmp_path / "out", (), s2=four, s2_bands="1,2,3,4,5,1,2,3,4,1"),
                     Progress())
    no_crs = _write(tmp_path / "S1_20230418.tif", _pattern((2, 30, 30), 3, 0.05).astype(np.float32), None, BOX,
                    ["VV", "VH"])
    with pytest.raises(UserError, match="has no CRS"):
        run_classify(_params("classify", scene, tmp_path / "out", (), s1=no_crs), Progress())


def test_an_area_restricts_the_grid_and_masks_outside(scene: dict[str, Any], tmp_path: Path) -> None:
    aoi = str(tmp_path / "aoi.gpkg")
    triangle = shapely.Polygon([(500000, 4980000), (500200, 4980000), (500000, 4980200)])
    pyogrio.raw.write(aoi, shapely.to_wkb(np.asarray([triangle], dtype=object)), [], [], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:32632")
    result = run_classify(_params("classify", scene, tmp_path / "out", ("s2",), aoi=aoi), Progress())
    with rasterio.open(result["outputs"]["classes"]) as src:
        data = src.read(1)
        assert (src.width, src.height) == (20, 20)
    assert data[-1, 0] != 255
    assert data[0, -1] == 255


def test_cancel_leaves_no_files(scene: dict[str, Any], tmp_path: Path) -> None:
    def cancelling() -> Progress:
        progress = Progress(lambda done, _total, _message: progress.cancel() if done >= 2 else None, min_interval_s=0)
        return progress

    out = tmp_path / "out"
    with pytest.raises(JobCancelled):
        run_prototypes(_params("prototypes", scene, out, ("s2",), batch_size=2, save_model=str(tmp_path / "m")),
                       cancelling())
    assert not out.exists()
    assert not (tmp_path / "m").exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(JobCancelled):
        run_classify(_params("classify", scene, out, ("s2",), batch_size=2), cancelling())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# -- train-skysense: a head from drawn labels, then classify with it ------------------------------------
def _labels(path: Path, boxes: dict[str, list[tuple[float, float, float, float]]]) -> str:
    names, geoms = [], []
    for name, items in boxes.items():
        for b in items:
            names.append(name)
            geoms.append(shapely.box(*b))
    pyogrio.raw.write(str(path), shapely.to_wkb(np.asarray(geoms, dtype=object)), [np.array(names, dtype=object)],
                      ["class_name"], driver="GPKG", geometry_type="Polygon", crs="EPSG:32632")
    return str(path)


def _half_labels(path: Path) -> str:
    """Four labels in the dark west half ("water") and four in the bright east half ("field")."""
    x0, y0 = BOX[0], BOX[1]
    west = [(x0 + 20, y0 + y, x0 + 120, y0 + y + 60) for y in (20, 120, 220, 320)]
    east = [(x0 + 260, y0 + y, x0 + 380, y0 + y + 60) for y in (20, 120, 220, 320)]
    return _labels(path, {"water": west, "field": east})


def test_train_skysense_then_classify_with_the_trained_head(scene: dict[str, Any], tmp_path: Path) -> None:
    labels = _half_labels(tmp_path / "labels.gpkg")
    params = _params("train-skysense", scene, tmp_path / "head", ("s2", "s1"), labels=labels, tile_px=20,
                     epochs=60, cache_dir=str(tmp_path / "cache"))
    result = run_train_skysense(params, Progress())
    assert result["cache"]["tiles_computed"] == result["tiles"] == 4
    metrics = result["metrics"]
    assert metrics["validated"]
    assert metrics["overall_accuracy"] > 0.9, metrics
    assert result["baseline"]["overall_accuracy"] is not None
    model = SkySense.from_pretrained(result["model"])
    assert [c["name"] for c in model.config.classes] == ["field", "water"]
    assert sorted(model.config.normalisation) == ["s1", "s2"]
    assert model.config.training["modalities"] == ["s2", "s1"]
    # A retrain reads every tile's features from the cache and gives the same head.
    again = run_train_skysense({**params, "out": str(tmp_path / "head2")}, Progress())
    assert again["cache"]["tiles_computed"] == 0
    assert again["losses"] == pytest.approx(result["losses"], rel=1e-4)

    classified = run_classify(_params("classify", scene, tmp_path / "out", ("s2", "s1"), model=result["model"]),
                              Progress())
    assert not classified["warnings"]  # the scene's model is a folder, not a name built with random weights
    assert classified["provenance"]["normalisation"] == model.config.normalisation
    with rasterio.open(classified["outputs"]["classes"]) as src:
        data = src.read(1)
    field_id = next(c["id"] for c in model.config.classes if c["name"] == "field")
    water_id = next(c["id"] for c in model.config.classes if c["name"] == "water")
    assert (data[:, :15] == water_id).mean() > 0.8  # random-weight encoders: chance is 0.5
    assert (data[:, 25:] == field_id).mean() > 0.8
    # One modality less than the head was trained on still runs, and says so.
    s2_only = run_classify(_params("classify", scene, tmp_path / "out2", ("s2",), model=result["model"]), Progress())
    assert any("trained on s2, s1" in w for w in s2_only["warnings"])


def test_train_skysense_refuses_labels_it_cannot_learn_from(scene: dict[str, Any], tmp_path: Path) -> None:
    x0, y0 = BOX[0], BOX[1]
    one_class = _labels(tmp_path / "one.gpkg", {"water": [(x0 + 20, y0 + 20, x0 + 100, y0 + 100),
                                                          (x0 + 20, y0 + 200, x0 + 100, y0 + 300)]})
    with pytest.raises(UserError, match="at least two classes"):
        run_train_skysense(_params("train-skysense", scene, tmp_path / "h", ("s2",), labels=one_class), Progress())
    elsewhere = _labels(tmp_path / "far.gpkg", {"a": [(x0 + 9000, y0, x0 + 9100, y0 + 100)],
                                                "b": [(x0 + 9200, y0, x0 + 9300, y0 + 100)]})
    with pytest.raises(UserError, match="outside the raster"):
        run_train_skysense(_params("train-skysense", scene, tmp_path / "h", ("s2",), labels=elsewhere), Progress())
    assert not (tmp_path / "h").exists()


def test_classify_without_a_head_points_to_training(scene: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train-skysense"):
        run_classify(_params("classify", scene, tmp_path / "c", ("s2",), model="skysense-tiny"), Progress())


@pytest.mark.slow  # three interpreters that import torch and timm: about a minute on two cores
def test_train_then_classify_from_the_shell(scene: dict[str, Any], tmp_path: Path) -> None:
    """What the README and the demo run: two commands, JSON out, a user error is one line and exit code 2."""
    import subprocess

    labels = _half_labels(tmp_path / "labels.gpkg")
    s2 = ",".join(scene["s2"])
    command = [str(BACKEND_PYTHON), "-m", "backend"]
    train = subprocess.run([*command, "train-skysense", "--model", scene["model"], "--labels", labels, "--s2", s2,
                            "--tile-px", "20", "--out", str(tmp_path / "head"), "--cache-dir", str(tmp_path / "cache"),
                            "--no-baseline"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["metrics"]["validated"]
    classify = subprocess.run([*command, "classify", "--model", str(tmp_path / "head"), "--s2", s2,
                               "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False, cwd=ROOT)
    assert classify.returncode == 0, classify.stderr
    assert Path(json.loads(classify.stdout)["outputs"]["classes"]).is_file()
    headless = subprocess.run([*command, "classify", "--s2", s2, "--out", str(tmp_path / "none")],
                              capture_output=True, text=True, check=False, cwd=ROOT)
    assert headless.returncode == 2
    assert "train-skysense" in headless.stderr.strip().splitlines()[-1]


# -- series: what the dock's date table shows before a job runs ------------------------------------------
def test_series_reads_dates_and_flags_what_would_stop_a_job(scene: dict[str, Any], tmp_path: Path) -> None:
    undated = _write(tmp_path / "sentinel2_scene.tif", _pattern((10, 40, 40), 1, 3000).astype(np.uint16), UTM, BOX,
                     list(S2_BANDS))
    four = _write(tmp_path / "S2_20230701.tif", _pattern((4, 40, 40), 1, 3000).astype(np.uint16), UTM, BOX)
    far = (BOX[0] + 5000, BOX[1], BOX[2] + 5000, BOX[3])
    elsewhere = _write(tmp_path / "S1_20230418.tif", _pattern((2, 30, 30), 3, 0.05).astype(np.float32), UTM, far,
                       ["VV", "VH"])
    spec = jobs.get("series")
    result = run_series(spec.bind({"model": "skysense-tiny", "s2": ",".join([scene["s2"][0], undated, four]),
                                   "s1": elsewhere}), Progress())
    rows = {Path(r["path"]).name: r for r in result["rows"]}
    assert rows["S2_20230415.tif"]["date"] == "2023-04-15"
    assert rows["S2_20230415.tif"]["date_source"] == "filename"
    assert rows["sentinel2_scene.tif"]["date"] is None
    assert rows["sentinel2_scene.tif"]["problem"] is None
    assert "lacks the bands" in rows["S2_20230701.tif"]["problem"]
    assert result["undated"] == [undated]
    assert any("without a date" in p for p in result["problems"])
    assert any("do not overlap" in p for p in result["problems"])
    # One modality only, dated and on one place: nothing to flag.
    alone = run_series(spec.bind({"model": "skysense-tiny", "s1": ",".join(scene["s1"])}), Progress())
    assert alone["problems"] == []
    assert [r["date"] for r in alone["rows"]] == ["2023-04-18", "2023-06-12"]
    # The bands asked for are the chosen model's: the bundled model reads Sentinel-2's ten bands with a band mask
    # (four undescribed bands: the 10 m ones, the rest missing), and Sentinel-1.
    bundled = run_series(spec.bind({"s2": four, "s1": elsewhere}), Progress())
    rows = {Path(r["path"]).name: r for r in bundled["rows"]}
    assert rows["S2_20230701.tif"]["problem"] is None
    assert rows["S2_20230701.tif"]["bands"] == [1, 2, 3, 4]
    assert rows["S2_20230701.tif"]["missing_bands"] == ["B5", "B6", "B7", "B8A", "B11", "B12"]
    assert rows["S1_20230418.tif"]["problem"] is None
    assert any("do not overlap" in p for p in bundled["problems"])
    # A model without a band mask or without a Sentinel-1 encoder still says so.
    plain = run_series(spec.bind({"model": "skysense-tiny", "s2": four}), Progress())
    assert "lacks the bands" in plain["rows"][0]["problem"]
