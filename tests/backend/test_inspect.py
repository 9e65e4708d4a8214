"""The inspect job: CRS, metres, bands and statistics over an area, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from backend.errors import UserError
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.rasters import write_area, write_raster
from tests.conftest import SAMPLE_SCENE


def inspect(image, aoi=None, **params):
    return run_job("inspect", {"image": str(image), "aoi": str(aoi) if aoi else None, **params}, Progress())


def test_sample_scene_whole() -> None:
    result = inspect(SAMPLE_SCENE)
    assert result["crs"] == "EPSG:32618"
    assert result["crs_name"] == "WGS 84 / UTM zone 18N"
    assert result["resolution_m"] == [10.0, 10.0]
    assert (result["width"], result["height"], result["count"]) == (640, 640, 4)
    assert result["area"]["area_km2"] == pytest.approx(40.96)
    names = [band["description"] for band in result["bands"]]
    assert names == ["B02 blue", "B03 green", "B04 red", "B08 nir"]
    blue = result["bands"][0]["statistics"]
    assert blue["min"] <= blue["p2"] <= blue["p50"] <= blue["p98"] <= blue["max"]
    assert blue["valid_px"] == 640 * 640


def test_area_in_another_crs_is_reprojected(tmp_path) -> None:
    # A 1 km square in the scene's UTM zone, handed over in WGS 84 degrees.
    square = shapely.box(444330.0, 4169860.0, 445330.0, 4170860.0)
    in_degrees = shapely.geometry.shape(transform_geom("EPSG:32618", "EPSG:4326", shapely.geometry.mapping(square)))
    aoi = write_area(tmp_path / "area.gpkg", [in_degrees], "EPSG:4326")
    result = inspect(SAMPLE_SCENE, aoi)
    window = result["area"]["window"]
    assert window["col_off"] == pytest.approx(100, abs=1)
    assert window["row_off"] == pytest.approx(300, abs=1)
    assert window["width"] == pytest.approx(100, abs=2)
    assert result["bands"][0]["statistics"]["valid_px"] == pytest.approx(100 * 100, rel=0.03)


def test_pixels_outside_the_polygon_are_left_out(tmp_path) -> None:
    data = np.zeros((1, 100, 100), dtype=np.uint8)
    data[:, :, 50:] = 200  # the right half is bright
    image = write_raster(tmp_path / "halves.tif", data, transform=from_origin(0, 1000, 10, 10))
    left_triangle = shapely.Polygon([(0, 1000), (490, 1000), (0, 0)])
    result = inspect(image, write_area(tmp_path / "tri.gpkg", [left_triangle], "EPSG:32618"))
    assert result["bands"][0]["statistics"]["max"] == 0
    # The window is the triangle's bounding box; the area is the triangle's (half of it).
    assert result["area"]["window_km2"] == pytest.approx(0.49, rel=0.01)
    assert result["area"]["area_km2"] == pytest.approx(0.245, rel=0.03)


def test_area_outside_the_raster_is_a_user_error(tmp_path) -> None:
    far = write_area(tmp_path / "far.gpkg", [shapely.box(0, 0, 1000, 1000)], "EPSG:32618")
    with pytest.raises(UserError, match="The area lies outside the raster"):
        inspect(SAMPLE_SCENE, far)


def test_raster_without_crs(tmp_path) -> None:
    image = write_raster(tmp_path / "nocrs.tif", np.ones((1, 20, 20), np.uint8), crs=None)
    result = inspect(image)
    assert result["crs"] is None
    assert result["resolution_m"] is None
    assert "no CRS" in result["warnings"][0]
    area = write_area(tmp_path / "a.gpkg", [shapely.box(0, 0, 1, 1)], "EPSG:4326")
    with pytest.raises(UserError, match="The raster has no CRS"):
        inspect(image, area)


def test_geographic_raster_reports_metres(tmp_path) -> None:
    # 0.0001 degree pixels at 45 degrees north: about 7.9 m east-west and 11.1 m north-south.
    image = write_raster(tmp_path / "deg.tif", np.ones((1, 50, 50), np.uint8), crs="EPSG:4326",
                         transform=from_origin(10.0, 45.0025, 0.0001, 0.0001))
    result = inspect(image)
    assert result["geographic"]
    assert result["resolution_m"][0] == pytest.approx(7.88, abs=0.02)
    assert result["resolution_m"][1] == pytest.approx(11.11, abs=0.02)


@pytest.mark.parametrize(("dtype", "count"), [(np.uint16, 1), (np.float32, 13), (np.int16, 3)])
def test_dtypes_and_band_counts_with_nodata(tmp_path, dtype, count) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 1000, size=(count, 64, 64)).astype(dtype)
    data[:, :8, :] = 0  # nodata rows
    if np.issubdtype(dtype, np.floating):
        data[:, 8, :] = np.nan
    image = write_raster(tmp_path / "x.tif", data, nodata=0)
    result = inspect(image)
    assert result["count"] == count
    expected_valid = 64 * 56 - (64 if np.issubdtype(dtype, np.floating) else 0)
    for band in result["bands"]:
        assert band["dtype"] == np.dtype(dtype).name
        assert band["nodata"] == 0
        assert band["statistics"]["valid_px"] == expected_valid
        assert band["statistics"]["min"] >= 1


def test_large_areas_are_sampled(tmp_path) -> None:
    image = write_raster(tmp_path / "big.tif", np.ones((1, 400, 400), np.uint8))
    result = inspect(image, max_samples_px=10_000)
    assert result["area"]["sampled_px"] <= 10_000 * 1.05
    assert result["area"]["decimation"] == pytest.approx(4.0)


def test_missing_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="Input not found: .*nothing.tif"):
        inspect(tmp_path / "nothing.tif")


def test_area_file_with_points_only_is_refused(tmp_path) -> None:
    import pyogrio

    points = np.array(shapely.to_wkb([shapely.Point(444000, 4170000)]), dtype=object)
    path = tmp_path / "points.gpkg"
    pyogrio.raw.write(str(path), points, field_data=[], fields=[], crs="EPSG:32618", geometry_type="Point",
                      driver="GPKG")
    with pytest.raises(UserError, match="holds no polygon"):
        inspect(SAMPLE_SCENE, path)
