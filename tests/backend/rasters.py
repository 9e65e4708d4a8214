"""Small rasters and areas written by the tests themselves (in the manner of torchgeo's data scripts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin


def write_raster(path: Path, data: np.ndarray, crs: str | None = "EPSG:32618",
                 transform=None, nodata=None) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF; 10 m pixels in the sample scene's corner by default."""
    transform = transform or from_origin(443330.0, 4173860.0, 10.0, 10.0)
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=CRS.from_user_input(crs) if crs else None, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


def write_area(path: Path, polygons: list[shapely.Geometry], crs: str) -> Path:
    """Write polygons to a GeoPackage in ``crs``."""
    geometry = np.array(shapely.to_wkb(polygons), dtype=object)
    pyogrio.raw.write(str(path), geometry, field_data=[], fields=[], crs=crs, geometry_type="Polygon",
                      driver="GPKG")
    return path
