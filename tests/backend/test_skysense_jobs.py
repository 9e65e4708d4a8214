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
from backend.models.skysense import SkySense
from backend.models.skysense.config import S2_BANDS
from backend.progress import Progress
from backend.skysense_jobs import run_classify, run_prototypes
from tests.backend.models.skysense.tiny import CLASSES, micro_config

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
    # The grid is in the CRS of the first input (hr in EPSG:3857, else Sentinel-2 in UTM) at 10 m cells.
    expected = CRS.from_epsg(3857) if modalities[0] == "hr" else UTM
    assert crs == expected
    assert transform[0] == pytest.approx(10.0)
    assert transform[4] == pytest.approx(-10.0)
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
    if "hr" in modalities:
        assert provenance["grid"]["hr_factor"] == 3
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
