"""Outputs of a classification: a class raster (uint8, palette) and class polygons (GeoPackage).

Each output is written under a temporary name beside its final one and renamed when complete, so a
cancelled or failed job never leaves a half-written file where a layer is expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes

from .area import pixel_size_m

CLASS_NODATA = 255


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` if the block succeeds."""
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _remove(partial)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        _remove(partial)


def _remove(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.aux.xml")):
        if leftover.exists():
            leftover.unlink()


def _rgb(colour: str) -> tuple[int, int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255


def write_class_raster(path: Path, class_ids: np.ndarray, transform: rasterio.Affine, crs: CRS | None,
                       classes: Sequence[dict[str, Any]], provenance: dict[str, Any]) -> Path:
    """A one-band uint8 GeoTIFF of class ids, nodata 255, a colour table and the class names as tags."""
    height, width = class_ids.shape
    colormap = {i: (0, 0, 0, 0) for i in range(256)}
    colormap.update({int(c["id"]): _rgb(c["colour"]) for c in classes})
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": transform, "nodata": CLASS_NODATA, "compress": "deflate",
               "tiled": width >= 256 and height >= 256}
    with replaced_on_success(path) as partial, rasterio.open(partial, "w", **profile) as dst:
        dst.write(class_ids.astype(np.uint8, copy=False), 1)
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "class")
        dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance),
                        **{f"CLASS_{int(c['id'])}": c["name"] for c in classes})
    return path


def class_polygons(class_ids: np.ndarray, transform: rasterio.Affine) -> tuple[list[shapely.Geometry], np.ndarray]:
    """One polygon per connected region of a class (4-connected), and its class id."""
    polygons, ids = [], []
    for geometry, value in shapes(class_ids.astype(np.uint8, copy=False), mask=class_ids != CLASS_NODATA,
                                  connectivity=4, transform=transform):
        polygons.append(shapely.geometry.shape(geometry))
        ids.append(int(value))
    return polygons, np.asarray(ids, dtype=np.int32)


def area_m2(polygons: Sequence[shapely.Geometry], crs: CRS | None, transform: rasterio.Affine) -> np.ndarray:
    """Polygon areas in square metres (in a geographic CRS, at each polygon's latitude; without a CRS,
    in the raster's own units)."""
    areas = shapely.area(np.asarray(polygons, dtype=object)).astype(np.float64) if polygons else np.zeros(0)
    if crs is None or not polygons:
        return areas
    if crs.is_geographic:
        pixel_deg2 = abs(transform.a * transform.e)
        latitudes = shapely.get_y(shapely.centroid(np.asarray(polygons, dtype=object)))
        factors = []
        for latitude in latitudes:
            size = pixel_size_m(crs, transform, float(latitude))
            factors.append(size[0] * size[1] / pixel_deg2 if size else 1.0)
        return areas * np.asarray(factors)
    _, metres_per_unit = crs.linear_units_factor
    return areas * metres_per_unit**2


def write_class_polygons(path: Path, class_ids: np.ndarray, transform: rasterio.Affine, crs: CRS | None,
                         classes: Sequence[dict[str, Any]], provenance: dict[str, Any]) -> int:
    """A GeoPackage layer "classes" with class_id, class_name and area_m2; returns the polygon count."""
    polygons, ids = class_polygons(class_ids, transform)
    names = {int(c["id"]): c["name"] for c in classes}
    geometry = np.array(shapely.to_wkb(polygons), dtype=object) if polygons else np.array([], dtype=object)
    field_data = [ids, np.array([names.get(int(i), "") for i in ids], dtype=object),
                  area_m2(polygons, crs, transform)]
    with replaced_on_success(path) as partial:
        pyogrio.raw.write(str(partial), geometry, field_data=field_data, fields=["class_id", "class_name", "area_m2"],
                          layer="classes", driver="GPKG", geometry_type="Polygon",
                          crs=crs.to_wkt() if crs else None,
                          layer_metadata={"TERRAFUSE_PROVENANCE": json.dumps(provenance)})
    return len(polygons)
