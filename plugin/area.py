"""The area of interest chosen in the dock, and its hand-over to the worker as a file."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDistanceArea,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
)


class AreaError(Exception):
    """An area the user chose cannot be used; the message says why."""


@dataclass
class AreaSelection:
    """A polygon area in a CRS; ``source`` says how it was chosen (for the dock's summary)."""

    geometry: QgsGeometry
    crs: QgsCoordinateReferenceSystem
    source: str

    def area_km2(self) -> float:
        measure = QgsDistanceArea()
        measure.setSourceCrs(self.crs, QgsProject.instance().transformContext())
        measure.setEllipsoid(self.crs.ellipsoidAcronym() or "EPSG:7030")
        return measure.measureArea(self.geometry) / 1e6

    def in_crs(self, crs: QgsCoordinateReferenceSystem) -> QgsGeometry:
        geometry = QgsGeometry(self.geometry)
        if crs.isValid() and self.crs.isValid() and crs != self.crs:
            geometry.transform(QgsCoordinateTransform(self.crs, crs, QgsProject.instance()))
        return geometry

    def summary(self) -> str:
        return f"{self.source}: {self.area_km2():,.2f} km² ({self.crs.authid() or 'custom CRS'})"

    def write(self, folder: Optional[str] = None) -> str:
        """Write the area to a GeoPackage (in its own CRS) for the worker, and return the path."""
        folder = folder or tempfile.mkdtemp(prefix="terrafuse-area-")
        path = os.path.join(folder, "area.gpkg")
        layer = QgsVectorLayer(f"MultiPolygon?crs={self.crs.toWkt()}", "area", "memory")
        feature = QgsFeature()
        geometry = QgsGeometry(self.geometry)
        geometry.convertToMultiType()
        feature.setGeometry(geometry)
        layer.dataProvider().addFeatures([feature])
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        error, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
            layer, path, QgsProject.instance().transformContext(), options
        )
        if error != QgsVectorFileWriter.WriterError.NoError:
            raise AreaError(f"Cannot write the area for the backend: {message}")
        return path


def area_from_layer(layer: QgsVectorLayer, selected_only: bool) -> AreaSelection:
    """The union of a polygon layer's (selected) features."""
    features = layer.getSelectedFeatures() if selected_only else layer.getFeatures()
    geometries = [f.geometry() for f in features if f.hasGeometry()]
    if not geometries:
        what = "selected polygons" if selected_only else "polygons"
        raise AreaError(f"The layer '{layer.name()}' has no {what}")
    union = QgsGeometry.unaryUnion(geometries)
    what = "selected features" if selected_only else "all features"
    return AreaSelection(union, layer.crs(), f"{layer.name()} ({what})")
