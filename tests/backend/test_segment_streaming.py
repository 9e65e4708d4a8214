"""The segment job's raster engine with a pixelwise stand-in model: streaming, edges, areas, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.transform import from_origin

from backend.errors import JobCancelled, UserError
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.rasters import write_area, write_raster
from tests.backend.segment_stand_in import (
    CLASSES,
    smooth_image,
    use_stand_in,
    whole_image_prediction,
    write_head_config,
)

X0, Y0, PIXEL = 443330.0, 4173860.0, 10.0


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    use_stand_in(monkeypatch)
    return write_head_config(tmp_path / "head")


def segment(head: Path, image: Path, out: Path, progress: Progress | None = None, **params: Any) -> dict[str, Any]:
    return run_job("segment", {"image": str(image), "model": str(head), "out": str(out), **params},
                   progress or Progress())


@pytest.fixture(scope="module")
def tall_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """700 x 301 px: several output strips of 256 rows, tiles of 64 px not aligned with either edge."""
    data = smooth_image(700, 301)
    return write_raster(tmp_path_factory.mktemp("tall") / "tall.tif", data), data


def test_streamed_prediction_equals_the_whole_image_prediction(stand_in: Path, tall_image: tuple[Path, np.ndarray],
                                                               tmp_path: Path) -> None:
    image, data = tall_image
    result = segment(stand_in, image, tmp_path / "out", overlap_px=16, batch_size=3, uncertainty=True)
    expected_ids, expected_confidence = whole_image_prediction(data)
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert (dst.width, dst.height) == (301, 700)
        assert dst.block_shapes == [(256, 256)]
        assert dst.compression.name.lower() == "deflate"
        classes = dst.read(1)
    with rasterio.open(tmp_path / "out" / "confidence.tif") as dst:
        confidence = dst.read(1)
    with rasterio.open(tmp_path / "out" / "uncertainty.tif") as dst:
        uncertainty = dst.read(1)
    assert (classes == expected_ids).all()  # no seam anywhere, strip edges included
    np.testing.assert_allclose(confidence, expected_confidence, atol=1e-5)
    assert ((uncertainty >= 0) & (uncertainty <= 1)).all()
    assert np.corrcoef(uncertainty.ravel(), confidence.ravel())[0, 1] < -0.5  # unsure where not confident
    assert result["nodata_px"] == 0
    assert sum(result["class_px"].values()) == 700 * 301
    assert result["tiles"] == 6 * 15  # 48 px apart over 301 x 700 px, the last ones shifted in


def test_an_area_at_the_raster_edge_is_written_in_place(stand_in: Path, tall_image: tuple[Path, np.ndarray],
                                                        tmp_path: Path) -> None:
    """An area in the raster's lower-right corner, bigger than one tile and cut by its edges: tiles
    are shifted inwards and the written window lands where it belongs."""
    image, data = tall_image
    aoi = write_area(tmp_path / "aoi.gpkg", [shapely.box(X0 + 200 * PIXEL, Y0 - 900 * PIXEL, X0 + 400 * PIXEL,
                                                          Y0 - 390 * PIXEL)], "EPSG:32618")
    segment(stand_in, image, tmp_path / "out", aoi=str(aoi), overlap_px=8)
    expected, _ = whole_image_prediction(data[:, 390:, 200:])
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert (dst.width, dst.height) == (101, 310)
        assert dst.transform.c == X0 + 200 * PIXEL
        assert dst.transform.f == Y0 - 390 * PIXEL
        assert (dst.read(1) == expected).all()


def test_pixels_outside_the_area_polygon_are_nodata(stand_in: Path, tall_image: tuple[Path, np.ndarray],
                                                    tmp_path: Path) -> None:
    image, _ = tall_image
    triangle = shapely.Polygon([(X0, Y0), (X0 + 300 * PIXEL, Y0), (X0, Y0 - 600 * PIXEL)])
    # Given in WGS84: reprojected to the raster's UTM zone.
    wgs84 = shapely.geometry.shape(rasterio.warp.transform_geom("EPSG:32618", "EPSG:4326",
                                                                 shapely.geometry.mapping(triangle)))
    aoi = write_area(tmp_path / "aoi.gpkg", [wgs84], "EPSG:4326")
    result = segment(stand_in, image, tmp_path / "out", aoi=str(aoi))
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst, \
            rasterio.open(tmp_path / "out" / "confidence.tif") as conf:
        classes, confidence = dst.read(1), conf.read(1)
    assert classes[5, 5] != 255
    assert classes[580, 3] != 255
    assert classes[500, 250] == 255
    assert confidence[500, 250] == -1.0
    assert 0.45 < (classes != 255).mean() < 0.55
    assert result["nodata_px"] == (classes == 255).sum()


def test_a_raster_in_degrees_is_tiled_in_pixels(stand_in: Path, tmp_path: Path) -> None:
    data = smooth_image(150, 170)
    image = write_raster(tmp_path / "wgs84.tif", data, crs="EPSG:4326",
                         transform=from_origin(10.0, 50.0, 0.0001, 0.0001))
    result = segment(stand_in, image, tmp_path / "out", overlap_px=16)
    assert result["tiles"] == 3 * 4
    assert result["tile_px"] == 64
    _, _, _, (_, _, areas, _) = pyogrio.raw.read(str(tmp_path / "out" / "classes.gpkg"))
    # 0.0001 deg at 50 deg N: about 7.2 m x 11.1 m per pixel.
    assert areas.sum() == pytest.approx(150 * 170 * 7.17 * 11.12, rel=0.01)
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        assert dst.crs.to_epsg() == 4326
        assert (dst.read(1) == whole_image_prediction(data)[0]).all()


@pytest.mark.parametrize(("bands", "dtype", "nodata", "choice"), [
    (1, np.uint16, 0, "1"), (3, np.float32, -9999.0, None), (13, np.uint16, 65535, "4,3,2"),
])
def test_band_counts_dtypes_and_nodata(stand_in: Path, tmp_path: Path, bands: int, dtype: Any, nodata: float,
                                       choice: str | None) -> None:
    data = smooth_image(96, 80, bands=bands, dtype=np.float32).astype(dtype)
    data[:, 10:20, 30:50] = nodata
    image = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    result = segment(stand_in, image, tmp_path / "out", bands=choice)
    with rasterio.open(tmp_path / "out" / "classes.tif") as dst:
        classes = dst.read(1)
    assert (classes[10:20, 30:50] == 255).all()
    assert result["nodata_px"] == 200
    picked = [int(b) - 1 for b in (choice or "1,2,3").split(",")]
    expected, _ = whole_image_prediction(data[(picked * 3)[:3]].astype(np.float32))
    keep = classes != 255
    assert (classes[keep] == expected[keep]).all()
    assert result["provenance"]["bands"] == [b + 1 for b in (picked * 3)[:3]]


def test_a_model_for_other_bands_is_refused(stand_in: Path, tmp_path: Path) -> None:
    head = write_head_config(tmp_path / "head4", bands=[4, 3, 2])
    image = write_raster(tmp_path / "rgb.tif", smooth_image(64, 64))
    with pytest.raises(UserError, match=r"trained on bands 4,3,2 .*this raster has 3 bands .*model for other bands"):
        segment(head, image, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no_crs", "outside", "all_nodata", "complex"])
def test_bad_input_is_refused_and_nothing_written(stand_in: Path, tmp_path: Path, case: str) -> None:
    data = smooth_image(64, 64)
    params: dict[str, Any] = {}
    if case == "no_crs":
        image, message = write_raster(tmp_path / "in.tif", data, crs=None), "no CRS"
    elif case == "outside":
        image, message = write_raster(tmp_path / "in.tif", data), "The area lies outside the raster"
        params["aoi"] = str(write_area(tmp_path / "aoi.gpkg", [shapely.box(0, 0, 10, 10)], "EPSG:32618"))
    elif case == "all_nodata":
        image, message = write_raster(tmp_path / "in.tif", np.zeros_like(data), nodata=0), "no valid pixel"
    else:
        image, message = write_raster(tmp_path / "in.tif", data.astype(np.complex64)), "complex values"
    with pytest.raises(UserError, match=message):
        segment(stand_in, image, tmp_path / "out", **params)
    assert not (tmp_path / "out").exists()


def test_a_cancel_in_the_middle_leaves_no_file(stand_in: Path, tall_image: tuple[Path, np.ndarray],
                                               tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("kept")

    def cancel_midway(done: int, total: int, message: str) -> None:
        if done == total // 2:
            progress.cancel()

    progress = Progress(cancel_midway, min_interval_s=0)
    with pytest.raises(JobCancelled):
        segment(stand_in, tall_image[0], tmp_path / "out", progress, uncertainty=True, overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


@pytest.fixture(scope="module")
def outputs(tall_image: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run with every output, shared by the checks of their content."""
    folder = tmp_path_factory.mktemp("outputs")
    with pytest.MonkeyPatch.context() as patch:
        use_stand_in(patch)
        head = write_head_config(folder / "head")
        result = segment(head, tall_image[0], folder / "out", uncertainty=True)
    return {"out": folder / "out", "result": result, "data": tall_image[1]}


def test_result_lists_the_layers_top_to_bottom(outputs: dict[str, Any]) -> None:
    out, result = outputs["out"], outputs["result"]
    assert [(layer["name"], layer["kind"], layer["visible"]) for layer in result["layers"]] == [
        ("Class polygons", "vector", False), ("Classes", "raster", True), ("Confidence", "raster", False),
        ("Uncertainty", "raster", False)]
    for layer in result["layers"]:
        assert Path(layer["path"]).is_file()
        assert Path(layer["qml"]).is_file()
        assert Path(layer["path"]).parent == out
    assert result["class_raster"] == str(out / "classes.tif")
    assert result["class_polygons"] == str(out / "classes.gpkg")
    assert result["confidence_raster"] == str(out / "confidence.tif")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    provenance = result["provenance"]
    assert provenance["checkpoint_sha256"] == "0" * 64
    assert provenance["backbone_sha256"] == "1" * 64
    assert provenance["model"].endswith("head")
    assert set(provenance["versions"]) >= {"terrafuse", "torch", "diffusers", "rasterio"}
    assert provenance["parameters"]["overlap_px"] == 16
    assert provenance["parameters"]["uncertainty"] is True
    assert provenance["created"]
    with rasterio.open(out / "confidence.tif") as dst:
        assert json.loads(dst.tags()["TERRAFUSE_PROVENANCE"]) == json.loads(json.dumps(provenance))
    assert json.loads(pyogrio.read_info(str(out / "classes.gpkg"))["layer_metadata"]["TERRAFUSE_PROVENANCE"])


def test_class_raster_has_colours_names_and_an_attribute_table(outputs: dict[str, Any]) -> None:
    out, result = outputs["out"], outputs["result"]
    with rasterio.open(out / "classes.tif") as dst:
        assert dst.nodata == 255
        assert dst.dtypes == ("uint8",)
        assert dst.colormap(1)[4] == (0, 255, 0, 255)
        assert dst.tags()["CLASS_4"] == "marsh & reed"
    table = ElementTree.parse(out / "classes.tif.aux.xml").getroot().find("PAMRasterBand/GDALRasterAttributeTable")
    assert [f.findtext("Name") for f in table.findall("FieldDefn")] == [
        "Value", "class_name", "Count", "Red", "Green", "Blue", "Alpha"]
    rows = [[f.text for f in row.findall("F")] for row in table.findall("Row")]
    assert rows[1] == ["4", "marsh & reed", str(result["class_px"]["marsh & reed"]), "0", "255", "0", "255"]
    if shutil.which("gdalinfo"):  # GDAL itself reads the table
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(out / "classes.tif")], capture_output=True,
                                         text=True, check=True).stdout)
        rat = info["rat"]
        assert [f["name"] for f in rat["fieldDefn"]][:2] == ["Value", "class_name"]
        assert [r["f"][1] for r in rat["row"]] == ["water", "marsh & reed", "field"]
    style = ElementTree.parse(out / "classes.qml").getroot()
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in style.iter("paletteEntry")] == [
        (str(c["id"]), c["colour"], c["name"]) for c in CLASSES]


def test_polygons_match_the_class_raster(outputs: dict[str, Any]) -> None:
    out = outputs["out"]
    _, _, wkb, (ids, names, areas, confidence) = pyogrio.raw.read(str(out / "classes.gpkg"))
    with rasterio.open(out / "classes.tif") as dst, rasterio.open(out / "confidence.tif") as conf:
        classes, scores, transform = dst.read(1), conf.read(1), dst.transform
    whole = [(shapely.geometry.shape(g), int(v)) for g, v in
             shapes(classes, mask=classes != 255, connectivity=4, transform=transform)]
    assert len(ids) == len(whole)  # pieces cut by the output strips were merged back
    assert sorted(areas.round(3)) == sorted(round(g.area, 3) for g, _ in whole)  # UTM metres, exact outlines
    names_by_id = {c["id"]: c["name"] for c in CLASSES}
    assert all(names_by_id[int(i)] == n for i, n in zip(ids, names))
    # The largest region: its mean confidence from the raster.
    largest = int(np.argmax(areas))
    region = rasterio.features.geometry_mask([shapely.from_wkb(wkb[largest])], classes.shape, transform,
                                             invert=True) & (classes == ids[largest])
    assert confidence[largest] == pytest.approx(scores[region].mean(), rel=1e-3)
    style = ElementTree.parse(out / "classes_polygons.qml").getroot()
    renderer = style.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class_id"
    assert [(c.get("value"), c.get("label")) for c in renderer.iter("category")] == [
        (str(c["id"]), c["name"]) for c in CLASSES]
    colours = [s.find("layer/Option/Option[@name='color']").get("value") for s in renderer.iter("symbol")]
    assert colours == ["0,0,255,255", "0,255,0,255", "255,0,0,255"]
