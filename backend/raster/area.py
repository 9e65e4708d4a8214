"""Areas of interest: polygons read from any vector file GDAL reads, reprojected to a raster's CRS."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds

from ..errors import UserError


@dataclass(frozen=True)
class AreaOfInterest:
    """Polygons (GeoJSON-like mappings) in the CRS ``crs``."""

    geometries: tuple[dict[str, Any], ...]
    crs: CRS | None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return shapely.union_all([shapely.geometry.shape(g) for g in self.geometries]).bounds

    def to_crs(self, crs: CRS) -> AreaOfInterest:
        if self.crs is None or self.crs == crs:
            return AreaOfInterest(self.geometries, crs)
        return AreaOfInterest(tuple(transform_geom(self.crs, crs, g) for g in self.geometries), crs)


def read_area(path: str) -> AreaOfInterest:
    """The polygons of a vector file; points and lines are refused with a message."""
    try:
        meta, _, wkb, _ = pyogrio.raw.read(path, read_geometry=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise UserError(f"Cannot read the area file '{path}': {exc}") from None
    polygons = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty
                and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise UserError(f"The area file '{path}' holds no polygon")
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    return AreaOfInterest(tuple(shapely.geometry.mapping(shapely.make_valid(p)) for p in polygons), crs)


def area_window(src: rasterio.io.DatasetReader, area: AreaOfInterest | None) -> tuple[Window, AreaOfInterest | None]:
    """The raster window that covers ``area`` (the whole raster without one), and the area in the
    raster's CRS. An area that misses the raster is a user error, not an empty result."""
    full = Window(0, 0, src.width, src.height)
    if area is None:
        return full, None
    if src.crs is None:
        raise UserError("The raster has no CRS, so an area cannot be placed on it; assign a CRS first")
    if area.crs is None:
        raise UserError("The area has no CRS; save it with one (any CRS works, it is reprojected)")
    local = area.to_crs(src.crs)
    exact = from_bounds(*local.bounds, transform=src.transform)
    col_off, row_off = math.floor(exact.col_off), math.floor(exact.row_off)
    window = Window(col_off, row_off, math.ceil(exact.col_off + exact.width) - col_off,
                    math.ceil(exact.row_off + exact.height) - row_off)
    try:
        clipped = window.intersection(full)
    except rasterio.errors.WindowError:
        clipped = None
    if clipped is None or clipped.width <= 0 or clipped.height <= 0:
        left, bottom, right, top = src.bounds
        raise UserError(
            f"The area lies outside the raster: area bounds {_fmt_bounds(local.bounds)}, raster bounds "
            f"{_fmt_bounds((left, bottom, right, top))} (in {src.crs.to_string()})"
        )
    return clipped, local


def covering_window(dataset: rasterio.io.DatasetReader, bounds: tuple[float, float, float, float]) -> Window:
    """The smallest window of ``dataset`` holding every pixel that overlaps ``bounds`` (in its CRS),
    clipped to the dataset."""
    exact = from_bounds(*bounds, transform=dataset.transform)
    col_off, row_off = math.floor(exact.col_off + 1e-9), math.floor(exact.row_off + 1e-9)
    window = Window(col_off, row_off, math.ceil(exact.col_off + exact.width - 1e-9) - col_off,
                    math.ceil(exact.row_off + exact.height - 1e-9) - row_off)
    return window.intersection(Window(0, 0, dataset.width, dataset.height))


def _fmt_bounds(bounds: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def pixel_size_m(crs: CRS | None, transform: rasterio.Affine, centre_y: float) -> tuple[float, float] | None:
    """Ground size of a pixel in metres (x, y); in a geographic CRS measured at the centre latitude."""
    if crs is None:
        return None
    res_x, res_y = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        # Length of a degree on the WGS84 ellipsoid at latitude phi (series expansion, cm-accurate);
        # rasterio has no geodesic helper and pyproj is not a dependency of the backend.
        phi = math.radians(centre_y)
        m_per_deg_lat = 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
        m_per_deg_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
        return res_x * m_per_deg_lon, res_y * m_per_deg_lat
    _, factor = crs.linear_units_factor
    return res_x * factor, res_y * factor


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone of a point."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
