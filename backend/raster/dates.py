"""Acquisition dates of the series' images: read from file names and raster metadata, turned into the day
of the year that indexes P_DTPE (eq. 2). Pure functions: the dock shows what they find and lets the user
edit it."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from pathlib import PurePath

# Sentinel-2 SAFE / L2A names (20230715T103031), Sentinel-1 (20230715T054312), compact and dashed dates,
# Landsat's YYYYDOY in product ids (LC08_L1TP_..._2023196...) is not read: ambiguous with other numbers.
_STAMP = re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})(?P<m>0[1-9]|1[0-2])(?P<d>0[1-9]|[12]\d|3[01])(?:T\d{6})?(?!\d)")
_DASHED = re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})[-_.](?P<m>0[1-9]|1[0-2])[-_.](?P<d>0[1-9]|[12]\d|3[01])(?!\d)")
#: Metadata tags that hold an acquisition date, most specific first (GDAL domain-less tags, STAC, TIFF).
DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "DATATAKE_SENSING_START", "PRODUCT_START_TIME",
             "datetime", "start_datetime", "TIFFTAG_DATETIME", "DATE", "acquisition_date")


def _valid(y: str, m: str, d: str) -> datetime.date | None:
    try:
        return datetime.date(int(y), int(m), int(d))
    except ValueError:
        return None


def date_from_text(text: str) -> datetime.date | None:
    """The first calendar date in a text: 20230715, 20230715T103031, 2023-07-15, 2023_07_15; TIFF's
    2023:07:15 12:00:00 too. None when there is none."""
    text = re.sub(r"(?<!\d)((?:19|20)\d{2}):(\d{2}):(\d{2})", r"\1-\2-\3", text)
    for pattern in (_DASHED, _STAMP):
        for match in pattern.finditer(text):
            date = _valid(match["y"], match["m"], match["d"])
            if date is not None:
                return date
    return None


def date_from_filename(path: str | PurePath) -> datetime.date | None:
    """The acquisition date in a file name (the file's own name first, then its folders, innermost first).
    A Sentinel-2 name holds the sensing date first and the processing baseline date later: the first wins."""
    path = PurePath(path)
    for part in [path.name, *reversed(path.parent.parts)]:
        date = date_from_text(part)
        if date is not None:
            return date
    return None


def date_from_metadata(tags: Mapping[str, str]) -> datetime.date | None:
    """The acquisition date in raster metadata tags (as rasterio's ``tags()`` returns them)."""
    lowered = {k.lower(): v for k, v in tags.items()}
    for tag in DATE_TAGS:
        value = lowered.get(tag.lower())
        if value:
            date = date_from_text(str(value))
            if date is not None:
                return date
    return None


def acquisition_date(path: str | PurePath, tags: Mapping[str, str] | None = None) -> tuple[datetime.date | None, str]:
    """The date of one image and where it came from: ``"metadata"``, ``"filename"`` or ``""`` (not found,
    the user must enter it). Metadata wins: file names are renamed more often than tags are edited."""
    date = date_from_metadata(tags or {})
    if date is not None:
        return date, "metadata"
    date = date_from_filename(path)
    return (date, "filename") if date is not None else (None, "")


def day_of_year(date: datetime.date) -> int:
    """1 for 1 January .. 365 (366 on 31 December of a leap year): the index of P_DTPE (eq. 2) plus one."""
    return date.timetuple().tm_yday
