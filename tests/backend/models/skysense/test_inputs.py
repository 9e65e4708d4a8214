"""Dates from file names and metadata, day-of-year indexing, band mapping from descriptions."""

from __future__ import annotations

import datetime

import pytest

from backend.errors import UserError
from backend.models.skysense.config import S1_BANDS, S2_BANDS
from backend.raster.band_mapping import canonical_band, default_band_mapping, map_bands
from backend.raster.dates import acquisition_date, date_from_filename, date_from_metadata, day_of_year


@pytest.mark.parametrize(("name", "expected"), [
    ("S2A_MSIL2A_20230715T103031_N0509_R108_T32TMR_20230715T170000.SAFE/B04.jp2", datetime.date(2023, 7, 15)),
    ("S1A_IW_GRDH_1SDV_20220103T054312_20220103T054337_041290_04E8B7_1A2B_VV.tif", datetime.date(2022, 1, 3)),
    ("/data/s2/2021-03-09_sentinel2.tif", datetime.date(2021, 3, 9)),
    ("/data/2020_12_31/field.tif", datetime.date(2020, 12, 31)),
    ("/data/s2/tile_12345678.tif", None),  # not a date: month 56
    ("scene_20231345.tif", None),
])
def test_dates_from_file_names(name: str, expected: datetime.date | None) -> None:
    assert date_from_filename(name) == expected


def test_dates_from_metadata_win_over_names() -> None:
    tags = {"TIFFTAG_DATETIME": "2019:05:02 10:11:12", "AREA_OR_POINT": "Area"}
    assert date_from_metadata(tags) == datetime.date(2019, 5, 2)
    assert date_from_metadata({"ACQUISITION_DATE": "2018-08-01T10:00:00Z", "DATE": "2000-01-01"}) == \
        datetime.date(2018, 8, 1)
    assert acquisition_date("x_20200101.tif", tags) == (datetime.date(2019, 5, 2), "metadata")
    assert acquisition_date("x_20200101.tif", {}) == (datetime.date(2020, 1, 1), "filename")
    assert acquisition_date("scene.tif", {}) == (None, "")


def test_day_of_year() -> None:
    assert day_of_year(datetime.date(2023, 1, 1)) == 1
    assert day_of_year(datetime.date(2023, 12, 31)) == 365
    assert day_of_year(datetime.date(2024, 12, 31)) == 366


@pytest.mark.parametrize(("description", "band"), [
    ("B02", "B2"), ("B2", "B2"), ("b8a", "B8A"), ("B8A - NIR narrow", "B8A"), ("Band 11", "B11"), ("B12", "B12"),
    ("vv", "VV"), ("Sigma0_VH_db", "VH"), ("red", "R"), ("NDVI", None), ("", None),
])
def test_canonical_band_names(description: str, band: str | None) -> None:
    assert canonical_band(description) == band


def test_sentinel2_bands_are_mapped_from_descriptions_in_any_order() -> None:
    descriptions = ["B1", "B12", "B11", "B8A", "B9", "B8", "B7", "B6", "B5", "B4", "B3", "B2"]
    indices, missing = map_bands(descriptions, S2_BANDS)
    assert missing == []
    assert indices == [12, 11, 10, 9, 8, 7, 6, 4, 3, 2]
    assert default_band_mapping(["VH", "VV"], S1_BANDS, "Sentinel-1") == [2, 1]


def test_undescribed_bands_in_order_and_missing_bands_named() -> None:
    assert default_band_mapping([None, None], S1_BANDS, "Sentinel-1") == [1, 2]
    with pytest.raises(UserError, match="lacks the bands B8A, B11, B12"):
        default_band_mapping(["B2", "B3", "B4", "B5", "B6", "B7", "B8"], S2_BANDS, "Sentinel-2")
