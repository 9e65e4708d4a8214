"""The model's working resolution: a grid over the raster at a ground sample distance in metres,
read through GDAL's warper (rasterio's WarpedVRT) so that only the windows asked for are resampled.

``train`` and ``segment`` read their tiles the same way: :func:`resolve_gsd` picks the resolution (the
user's, else the one the head or the backbone records), :func:`working_source` opens the raster on it, and
:func:`recorded_gsd` is what a head records, so that a head trained at one resolution maps at the same one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from ..errors import UserError
from .area import pixel_size_m

#: Relative difference below which a working resolution is the raster's own (no resampling).
SAME_RESOLUTION = 1e-6

log = logging.getLogger("terrafuse.raster")


@dataclass(frozen=True)
class WorkingGrid:
    """The raster's extent on pixels of ``gsd_m`` metres (in the raster's CRS; in degrees for a
    geographic CRS, converted at the raster's centre latitude)."""

    gsd_m: float
    transform: rasterio.Affine
    width: int
    height: int
    #: Working pixels per native pixel along x and y (> 1: the model sees finer pixels).
    zoom: tuple[float, float]

    def open(self, src: rasterio.io.DatasetReader) -> WarpedVRT:
        """``src`` on this grid: bilinear when the model's pixels are finer, average when coarser."""
        finer = min(self.zoom) >= 1.0
        return WarpedVRT(src, crs=src.crs, transform=self.transform, width=self.width, height=self.height,
                         resampling=Resampling.bilinear if finer else Resampling.average)


def working_grid(src: rasterio.io.DatasetReader, gsd_m: float | None) -> WorkingGrid | None:
    """The grid at ``gsd_m`` over ``src``; None without a gsd or when it is the raster's own."""
    if not gsd_m:
        return None
    if gsd_m < 0 or not math.isfinite(gsd_m):
        raise UserError(f"gsd_m must be a positive number of metres; got {gsd_m}")
    if src.transform.b or src.transform.d:
        raise UserError("The raster's grid is rotated; warp it to a north-up grid before resampling it (gsd_m)")
    left, bottom, right, top = src.bounds
    native = pixel_size_m(src.crs, src.transform, (bottom + top) / 2)
    if native is None:
        raise UserError("The raster has no CRS, so its pixels have no size in metres for gsd_m")
    zoom_x, zoom_y = native[0] / gsd_m, native[1] / gsd_m
    if abs(zoom_x - 1) < SAME_RESOLUTION and abs(zoom_y - 1) < SAME_RESOLUTION:
        return None
    res_x, res_y = abs(src.transform.a) / zoom_x, abs(src.transform.e) / zoom_y
    width, height = _cells(src.width, zoom_x), _cells(src.height, zoom_y)
    pixels = width * height
    if pixels > 2**40:
        raise UserError(f"gsd_m={gsd_m} m would make a grid of {width} x {height} px; choose a coarser gsd_m")
    transform = rasterio.Affine(res_x, 0.0, src.transform.c, 0.0, -res_y if src.transform.e < 0 else res_y,
                                src.transform.f)
    return WorkingGrid(gsd_m, transform, width, height, (zoom_x, zoom_y))


def _cells(native_px: int, zoom: float) -> int:
    """Working pixels along an axis of ``native_px`` pixels: finer ones whose centres lie on the raster
    (no pixel of the warper's outside fill), or coarser ones that cover it all (so that every native
    pixel has a working pixel to take its class from)."""
    if zoom >= 1:
        return max(1, math.ceil(native_px * zoom - 0.5))
    return max(1, math.ceil(native_px * zoom - 1e-6))


def native_gsd_m(src: Any) -> float | None:
    """The raster's own pixel size in metres, when its pixels are square (None without a CRS or for
    rectangular pixels, which only an explicit ``gsd_m`` makes square)."""
    left, bottom, right, top = src.bounds
    size = pixel_size_m(src.crs, src.transform, (bottom + top) / 2)
    if size is None or abs(size[0] - size[1]) > SAME_RESOLUTION * max(size):
        return None
    return float(size[0])


def resolve_gsd(requested: float | None, default: float | None, default_is: str = "") -> tuple[float | None, str]:
    """The working resolution (m): ``requested`` when given (0: the raster's own), else ``default`` (what the
    head or the backbone records). The second value warns when a request differs from ``default``, which
    ``default_is`` describes ("the head was trained at"): features at another resolution than a head's
    training are not the ones it learned from."""
    if requested is None:
        return (float(default) if default else None), ""
    chosen = float(requested) or None
    if default and (chosen is None or abs(chosen - float(default)) > SAME_RESOLUTION * float(default)):
        asked = f"{chosen:g} m" if chosen else "the raster's own resolution"
        warning = (f"gsd_m: working at {asked}, but {default_is or 'the recorded resolution is'} "
                   f"{float(default):g} m; features at another resolution may map worse")
        log.warning(warning)
        return chosen, warning
    return chosen, ""


@contextmanager
def working_source(src: rasterio.io.DatasetReader, grid: WorkingGrid | None) -> Iterator[Any]:
    """``src`` as the model reads it: on ``grid`` (a WarpedVRT, closed afterwards), or ``src`` itself."""
    if grid is None:
        yield src
        return
    with grid.open(src) as vrt:
        yield vrt


def recorded_gsd(src: rasterio.io.DatasetReader, grid: WorkingGrid | None) -> float | None:
    """The resolution a head records from its training: the working grid's, else the raster's own."""
    return grid.gsd_m if grid is not None else native_gsd_m(src)
