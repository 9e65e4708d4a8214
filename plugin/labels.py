"""The labels layer: a GeoPackage of labelled polygons and its classes, saved as each edit is made.

The GeoPackage holds two tables: ``labels`` (polygons with class_id, class_name, colour) and
``classes`` (class_id, class_name, colour), so that a class without labels yet is kept too. Every
change goes straight to the data provider, never through an edit buffer: nothing is lost if QGIS
closes. A point label is stored as a small square (``point_size_px`` raster pixels around the click),
because a GeoPackage layer holds one geometry type and the training reads polygons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureRequest,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtGui import QColor

from .qt_compat import field_type

LABELS_TABLE = "labels"
CLASSES_TABLE = "classes"
#: Colours given to new classes in turn (ColorBrewer's Set1 and Dark2, readable on imagery).
CLASS_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf",
                 "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


class LabelsError(Exception):
    """A problem with the labels layer that the user can fix."""


@dataclass(frozen=True)
class LabelClass:
    class_id: int
    name: str
    colour: str


def _fields() -> QgsFields:
    fields = QgsFields()
    fields.append(QgsField("class_id", field_type("Int")))
    fields.append(QgsField("class_name", field_type("QString")))
    fields.append(QgsField("colour", field_type("QString")))
    return fields


def _write_table(path: str, table: str, geometry_type: QgsWkbTypes.Type, crs: QgsCoordinateReferenceSystem,
                 append: bool) -> None:
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = table
    if append:
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    writer = QgsVectorFileWriter.create(path, _fields(), geometry_type, crs, QgsProject.instance().transformContext(),
                                        options)
    if writer.hasError():
        raise LabelsError(f"Cannot create '{path}': {writer.errorMessage()}")
    del writer  # closes the file


class LabelsLayer:
    """A labels GeoPackage: its polygon layer (shown on the map) and its classes table."""

    def __init__(self, layer: QgsVectorLayer) -> None:
        path = layer.source().split("|")[0]
        if layer.providerType() != "ogr" or not path.lower().endswith(".gpkg"):
            raise LabelsError(f"The layer '{layer.name()}' is not a GeoPackage; create a labels layer instead")
        if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
            raise LabelsError(f"The layer '{layer.name()}' does not hold polygons")
        self.layer = layer
        self.path = path
        self._ensure_fields()
        self.classes_layer = self._open_classes()

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, crs: QgsCoordinateReferenceSystem, name: str = "Labels") -> LabelsLayer:
        if not path.lower().endswith(".gpkg"):
            path += ".gpkg"
        if os.path.exists(path):
            raise LabelsError(f"'{path}' exists already; open it as a layer to adopt it")
        _write_table(path, LABELS_TABLE, QgsWkbTypes.Type.MultiPolygon, crs, append=False)
        _write_table(path, CLASSES_TABLE, QgsWkbTypes.Type.NoGeometry, crs, append=True)
        layer = QgsVectorLayer(f"{path}|layername={LABELS_TABLE}", name, "ogr")
        if not layer.isValid():
            raise LabelsError(f"Cannot open the new labels layer '{path}'")
        return cls(layer)

    def _ensure_fields(self) -> None:
        """Adopting a GeoPackage of polygons adds the fields the labels need, keeping the others."""
        names = self.layer.fields().names()
        missing = [field for field in _fields() if field.name() not in names]
        if missing:
            if not self.layer.dataProvider().addAttributes(missing):
                raise LabelsError(f"Cannot add the label fields to '{self.layer.name()}'")
            self.layer.updateFields()

    def _open_classes(self) -> QgsVectorLayer:
        classes = QgsVectorLayer(f"{self.path}|layername={CLASSES_TABLE}", "classes", "ogr")
        if not classes.isValid():
            _write_table(self.path, CLASSES_TABLE, QgsWkbTypes.Type.NoGeometry, self.layer.crs(), append=True)
            classes = QgsVectorLayer(f"{self.path}|layername={CLASSES_TABLE}", "classes", "ogr")
            if not classes.isValid():
                raise LabelsError(f"Cannot keep the classes in '{self.path}'")
            self._import_classes_from_labels(classes)
        return classes

    def _import_classes_from_labels(self, classes: QgsVectorLayer) -> None:
        """An adopted layer's classes come from the class names its polygons already carry."""
        seen: Dict[str, int] = {}
        for feature in self.layer.getFeatures():
            name = feature["class_name"]
            if name and name not in seen:
                seen[name] = len(seen)
        rows = []
        for name, class_id in seen.items():
            colour = CLASS_COLOURS[class_id % len(CLASS_COLOURS)]
            rows.append(self._class_row(classes, LabelClass(class_id, name, colour)))
        classes.dataProvider().addFeatures(rows)
        for feature in self.layer.getFeatures():
            if feature["class_name"] in seen:
                self._set_attributes(feature.id(), class_id=seen[feature["class_name"]])

    # -- classes ----------------------------------------------------------------------------
    @staticmethod
    def _class_row(classes: QgsVectorLayer, label_class: LabelClass) -> QgsFeature:
        row = QgsFeature(classes.fields())  # the GeoPackage adds an fid first: set fields by name
        row.setAttribute("class_id", label_class.class_id)
        row.setAttribute("class_name", label_class.name)
        row.setAttribute("colour", label_class.colour)
        return row

    def classes(self) -> List[LabelClass]:
        rows = [LabelClass(int(f["class_id"]), str(f["class_name"]), str(f["colour"]))
                for f in self.classes_layer.getFeatures()]
        return sorted(rows, key=lambda c: c.class_id)

    def get_class(self, class_id: int) -> LabelClass:
        for label_class in self.classes():
            if label_class.class_id == class_id:
                return label_class
        raise LabelsError(f"There is no class {class_id}")

    def add_class(self, name: str, colour: Optional[str] = None) -> LabelClass:
        name = name.strip()
        if not name:
            raise LabelsError("A class needs a name")
        existing = self.classes()
        if any(c.name == name for c in existing):
            raise LabelsError(f"There is a class '{name}' already")
        class_id = max((c.class_id for c in existing), default=-1) + 1
        colour = colour or CLASS_COLOURS[class_id % len(CLASS_COLOURS)]
        row = self._class_row(self.classes_layer, LabelClass(class_id, name, colour))
        if not self.classes_layer.dataProvider().addFeatures([row])[0]:
            raise LabelsError(f"Cannot save the class '{name}'")
        self.apply_style()
        return LabelClass(class_id, name, colour)

    def rename_class(self, class_id: int, name: str) -> None:
        name = name.strip()
        if not name:
            raise LabelsError("A class needs a name")
        if any(c.name == name and c.class_id != class_id for c in self.classes()):
            raise LabelsError(f"There is a class '{name}' already")
        self._update_class(class_id, class_name=name)

    def recolour_class(self, class_id: int, colour: str) -> None:
        if not QColor(colour).isValid():
            raise LabelsError(f"'{colour}' is not a colour")
        self._update_class(class_id, colour=QColor(colour).name())

    def delete_class(self, class_id: int) -> int:
        """Delete the class and its labels; returns how many labels went with it."""
        doomed = [f.id() for f in self._features_of(class_id)]
        self.layer.dataProvider().deleteFeatures(doomed)
        rows = [f.id() for f in self.classes_layer.getFeatures() if int(f["class_id"]) == class_id]
        self.classes_layer.dataProvider().deleteFeatures(rows)
        self.layer.triggerRepaint()
        self.apply_style()
        return len(doomed)

    def _update_class(self, class_id: int, **values: str) -> None:
        self.get_class(class_id)
        for row in self.classes_layer.getFeatures():
            if int(row["class_id"]) == class_id:
                changes = {self.classes_layer.fields().indexOf(k): v for k, v in values.items()}
                self.classes_layer.dataProvider().changeAttributeValues({row.id(): changes})
        for feature in self._features_of(class_id):
            self._set_attributes(feature.id(), **values)
        self.apply_style()

    def _features_of(self, class_id: int):
        return self.layer.getFeatures(QgsFeatureRequest().setFilterExpression(f'"class_id" = {int(class_id)}'))

    def _set_attributes(self, feature_id: int, **values) -> None:
        changes = {self.layer.fields().indexOf(k): v for k, v in values.items()}
        self.layer.dataProvider().changeAttributeValues({feature_id: changes})

    def counts(self) -> Dict[int, int]:
        """Labels per class id."""
        counts: Dict[int, int] = {c.class_id: 0 for c in self.classes()}
        for feature in self.layer.getFeatures():
            if feature["class_id"] in counts:
                counts[feature["class_id"]] += 1
        return counts

    # -- labels -----------------------------------------------------------------------------
    def add_label(self, geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem, class_id: int) -> int:
        """Save one label (a polygon in ``crs``) for the class; returns its feature id."""
        label_class = self.get_class(class_id)
        geometry = QgsGeometry(geometry)
        if crs.isValid() and crs != self.layer.crs():
            geometry.transform(QgsCoordinateTransform(crs, self.layer.crs(), QgsProject.instance()))
        if geometry.type() != QgsWkbTypes.GeometryType.PolygonGeometry or geometry.isEmpty():
            raise LabelsError("A label must be a polygon with an area")
        geometry.convertToMultiType()
        feature = QgsFeature(self.layer.fields())
        feature.setGeometry(geometry)
        feature.setAttribute("class_id", label_class.class_id)
        feature.setAttribute("class_name", label_class.name)
        feature.setAttribute("colour", label_class.colour)
        ok, added = self.layer.dataProvider().addFeatures([feature])
        if not ok:
            raise LabelsError(f"Cannot save the label in '{self.path}'")
        self.layer.updateExtents()
        self.layer.triggerRepaint()
        return added[0].id()

    @staticmethod
    def point_square(point: QgsPointXY, size: float) -> QgsGeometry:
        """The square a point label stands for: ``size`` map units wide, centred on the click."""
        half = size / 2
        return QgsGeometry.fromRect(QgsRectangle(point.x() - half, point.y() - half,
                                                 point.x() + half, point.y() + half))

    # -- style ------------------------------------------------------------------------------
    def apply_style(self) -> None:
        """Categorized by class, in the class colours, with the class names in the legend."""
        categories = []
        for label_class in self.classes():
            symbol = QgsSymbol.defaultSymbol(QgsWkbTypes.GeometryType.PolygonGeometry)
            colour = QColor(label_class.colour)
            fill = QColor(colour)
            fill.setAlpha(90)
            symbol.setColor(fill)
            symbol.symbolLayer(0).setStrokeColor(colour)
            symbol.symbolLayer(0).setStrokeWidth(0.6)
            categories.append(QgsRendererCategory(label_class.class_id, symbol, label_class.name))
        self.layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
        self.layer.triggerRepaint()
