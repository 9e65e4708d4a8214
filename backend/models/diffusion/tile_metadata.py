"""The tiles' own DiffusionSat metadata (metadata "tile") as ``train`` and ``segment`` read it.

Each tile's values come from the raster as the model reads it (:mod:`...raster.resample`): the centre of
the tile's window in WGS 84, the ground sample distance of the working pixels (what the head records), the
acquisition date where it is known (the ``date`` parameter, else the raster's date tags or its file name, as
for SkySense's series) and no cloud cover (0, DiffusionSat's value for an unknown one). The normalisation is
:class:`.metadata.TileMetadata`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from rasterio.windows import Window

from ...errors import UserError
from ...raster.dates import acquisition_date
from .metadata import TileMetadata, parse_date


class TileMetadataReader:
    """``reader(source, windows)`` -> (N, 7) float32: DiffusionSat's normalised metadata of each window."""

    def __init__(self, gsd_m: float, date: dt.date | None, date_source: str) -> None:
        self.gsd_m = float(gsd_m)
        self.date = date
        self.date_source = date_source

    def __call__(self, source: Any, windows: Sequence[Window]) -> np.ndarray:
        rows = [TileMetadata.from_bounds(source.crs, source.window_bounds(window), self.gsd_m,
                                         date=self.date).normalised() for window in windows]
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)

    def describe(self) -> dict[str, Any]:
        """What a head's sidecar and an output's provenance record about the metadata fed to the UNet."""
        return {"mode": "tile", "gsd_m": self.gsd_m, "date": self.date.isoformat() if self.date else None,
                "date_source": self.date_source, "cloud_cover": None}


def image_date(date_text: str | None, image: str) -> tuple[dt.date | None, str]:
    """The acquisition date: the user's (``"parameter"``), else the raster's tags (``"metadata"``) or file
    name (``"filename"``); ``(None, "")`` when none is known (DiffusionSat's zeros for the date)."""
    if date_text:
        return parse_date(date_text), "parameter"
    import rasterio

    with rasterio.open(image) as src:
        tags = src.tags()
    return acquisition_date(image, tags)


def tile_metadata_reader(mode: str | None, gsd_m: float | None, date_text: str | None,
                         image: str) -> TileMetadataReader | None:
    """The reader for metadata ``mode`` "tile" (None for "none"); ``gsd_m`` is the working pixels' size."""
    if (mode or "none") == "none":
        return None
    if mode != "tile":
        raise UserError(f"The metadata mode must be none or tile; got {mode!r}")
    if not gsd_m:
        raise UserError("Metadata 'tile' needs the ground sample distance of the pixels, and this raster's "
                        "pixels are not square metres: give gsd_m")
    date, source = image_date(date_text, image)
    return TileMetadataReader(gsd_m, date, source)


def head_tile_metadata(config: Any, gsd_m: float | None, date_text: str | None,
                       image: str) -> TileMetadataReader | None:
    """The reader a head needs: one when its features were read with the tiles' metadata, else None."""
    return tile_metadata_reader((config.features or {}).get("metadata", "none"), gsd_m, date_text, image)
