"""Layers that are not files (XYZ and WMS tiles, other providers) exported over the area as a GeoTIFF.

The backend reads files with rasterio, so a web layer is rendered by QGIS's own provider into a
GeoTIFF first, at a ground resolution in metres the user picks, in the UTM zone of the area (a
metric grid whatever the layer's CRS: web layers are in Web Mercator, whose metres are not ground
metres away from the equator).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRasterProjector,
    QgsRectangle,
)

from .area import AreaSelection

MAX_EXPORT_PX = 20_000  # a side; beyond this the user is asked for a coarser resolution


class ExportError(Exception):
    """The layer cannot be exported over the area; the message says why."""


def is_file_raster(layer: QgsRasterLayer) -> bool:
    return layer.providerType() == "gdal" and os.path.isfile(layer.source().split("|")[0])


def utm_crs(longitude: float, latitude: float) -> QgsCoordinateReferenceSystem:
    """The WGS 84 / UTM zone of a point (EPSG 326xx north, 327xx south)."""
    zone = min(60, max(1, int(math.floor((longitude + 180) / 6)) + 1))
    return QgsCoordinateReferenceSystem(f"EPSG:{(32600 if latitude >= 0 else 32700) + zone}")


def export_extent(area: Optional[AreaSelection], layer: QgsRasterLayer,
                  crs: QgsCoordinateReferenceSystem) -> QgsRectangle:
    project = QgsProject.instance()
    if area is not None:
        return area.in_crs(crs).boundingBox()
    transform = QgsCoordinateTransform(layer.crs(), crs, project)
    return transform.transformBoundingBox(layer.extent())


def export_raster(layer: QgsRasterLayer, area: Optional[AreaSelection], gsd_m: float,
                  folder: Optional[str] = None) -> str:
    """Render ``layer`` over the area into a GeoTIFF with ``gsd_m`` metre pixels; returns its path."""
    if gsd_m <= 0:
        raise ExportError("The export resolution must be positive")
    if area is None and layer.extent().isEmpty():
        raise ExportError(f"The layer '{layer.name()}' has no extent: draw an area to export it over")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    centre_extent = (area.in_crs(wgs84).boundingBox() if area is not None else
                     QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transformBoundingBox(
                         layer.extent()))
    crs = utm_crs(centre_extent.center().x(), centre_extent.center().y())
    extent = export_extent(area, layer, crs)
    columns, rows = math.ceil(extent.width() / gsd_m), math.ceil(extent.height() / gsd_m)
    if max(columns, rows) > MAX_EXPORT_PX:
        raise ExportError(f"Exporting '{layer.name()}' at {gsd_m:g} m over this area makes {columns} x {rows} px; "
                          f"choose a coarser resolution or a smaller area")
    extent = QgsRectangle(extent.xMinimum(), extent.yMaximum() - rows * gsd_m,
                          extent.xMinimum() + columns * gsd_m, extent.yMaximum())
    folder = folder or tempfile.mkdtemp(prefix="terrafuse-export-")
    path = os.path.join(folder, "export.tif")
    pipe = QgsRasterPipe()
    if not pipe.set(layer.dataProvider().clone()):
        raise ExportError(f"Cannot read the layer '{layer.name()}'")
    projector = QgsRasterProjector()
    projector.setCrs(layer.crs(), crs, QgsProject.instance().transformContext())
    pipe.insert(2, projector)
    writer = QgsRasterFileWriter(path)
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES"])
    error = writer.writeRaster(pipe, columns, rows, extent, crs, QgsProject.instance().transformContext())
    if error != QgsRasterFileWriter.WriterError.NoError:
        raise ExportError(f"Exporting '{layer.name()}' failed (error {int(error)})")
    return path
