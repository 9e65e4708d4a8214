"""The ``inspect`` job: what a raster holds over an area (CRS, metres, bands, statistics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.features import geometry_mask

from ..progress import Progress
from ..raster.area import area_window, pixel_size_m, read_area
from ..raster.inspect import band_statistics, open_raster


def run_inspect(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    area = read_area(params["aoi"]) if params["aoi"] else None
    with open_raster(params["image"]) as src:
        window, local_area = area_window(src, area)
        progress.update(0, src.count + 1, "reading the area")
        # Statistics from at most max_samples_px pixels: a decimated read uses the overviews.
        scale = max(1.0, math.sqrt(window.width * window.height / max(1, params["max_samples_px"])))
        out_h, out_w = max(1, round(window.height / scale)), max(1, round(window.width / scale))
        window_transform = src.window_transform(window) @ rasterio.Affine.scale(window.width / out_w,
                                                                               window.height / out_h)
        inside = None
        if local_area is not None:
            inside = ~geometry_mask(local_area.geometries, (out_h, out_w), window_transform)
        bands = []
        for index in range(1, src.count + 1):
            data = src.read(index, window=window, out_shape=(out_h, out_w), masked=True,
                            resampling=Resampling.nearest)
            valid = ~np.ma.getmaskarray(data)
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.isfinite(data.filled(0))
            if inside is not None:
                valid &= inside
            bands.append({
                "index": index,
                "dtype": src.dtypes[index - 1],
                "nodata": src.nodatavals[index - 1],
                "description": src.descriptions[index - 1] or "",
                "colour": src.colorinterp[index - 1].name,
                "statistics": band_statistics(np.asarray(data.data)[valid]),
            })
            progress.update(index, src.count + 1, f"band {index} of {src.count}")
        bounds = rasterio.windows.bounds(window, src.transform)
        centre_y = (bounds[1] + bounds[3]) / 2
        size_m = pixel_size_m(src.crs, src.transform, centre_y)
        result = {
            "path": params["image"],
            "driver": src.driver,
            "crs": src.crs.to_string() if src.crs else None,
            "crs_name": _crs_name(src.crs),
            "geographic": bool(src.crs and src.crs.is_geographic),
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "resolution": [abs(src.transform.a), abs(src.transform.e)],
            "resolution_m": list(size_m) if size_m else None,
            "bounds": list(src.bounds),
            "area": {
                "window": {"col_off": int(window.col_off), "row_off": int(window.row_off),
                           "width": int(window.width), "height": int(window.height)},
                "bounds": list(bounds),
                "window_km2": _area_km2(window, size_m),
                "area_km2": _area_km2(window, size_m, float(inside.mean()) if inside is not None else 1.0),
                "sampled_px": out_w * out_h,
                "decimation": round(scale, 3),
                "polygons": len(local_area.geometries) if local_area else 0,
            },
            "bands": bands,
            "warnings": [] if src.crs else ["The raster has no CRS: it cannot be placed on a map or cut by an area"],
        }
    progress.update(src.count + 1, src.count + 1, "done")
    return result


def _crs_name(crs: rasterio.crs.CRS | None) -> str | None:
    if crs is None:
        return None
    try:
        import re

        match = re.search(r'^[A-Z]+(?:CRS|CS)\["([^"]+)"', crs.to_wkt())
        return match.group(1) if match else crs.to_string()
    except Exception:  # noqa: BLE001 - a name is cosmetic
        return crs.to_string()


def _area_km2(window: rasterio.windows.Window, size_m: tuple[float, float] | None,
              inside_fraction: float = 1.0) -> float | None:
    """Ground area of the window, or of the part of it inside the area's polygons."""
    if size_m is None:
        return None
    return round(window.width * size_m[0] * window.height * size_m[1] * inside_fraction / 1e6, 6)
