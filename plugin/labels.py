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
    QgsDistanceArea,
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
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

from .qt_compat import field_type

LABELS_TABLE = "labels"
CLASSES_TABLE = "classes"
#: How a label was drawn (polygon, rectangle, point), kept in the labels table of the GeoPackages Terrafuse
#: makes; guessed from the geometry in others.
SHAPE_FIELD = "shape"
#: Colours given to new classes in turn (ColorBrewer's Set1 and Dark2, readable on imagery).
CLASS_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf",
                 "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


class LabelsError(Exception):
    """A problem with the labels layer that the user can fix."""


class NotALabelsLayer(LabelsError):
    """A polygon layer that is not a labels layer yet: the dock asks which field names the classes and copies it
    (the user's file is never edited unasked)."""


@dataclass(frozen=True)
class LabelClass:
    class_id: int
    name: str
    colour: str


@dataclass(frozen=True)
class LabelEntry:
    """One label of the list: its feature id, class, shape and area."""

    feature_id: int
    class_id: Optional[int]
    class_name: str
    shape: str
    area_m2: float


def is_null(value) -> bool:
    """A missing attribute: None or QGIS's NULL (a null QVariant)."""
    return value is None or (isinstance(value, QVariant) and value.isNull())


def area_text(area_m2: float) -> str:
    """``850 m²``, ``1.2 ha``, ``3.4 km²``."""
    if area_m2 < 10_000:
        return f"{area_m2:,.0f} m²"
    if area_m2 < 1_000_000:
        return f"{area_m2 / 10_000:.1f} ha"
    return f"{area_m2 / 1_000_000:.2f} km²"


def guess_shape(geometry: QgsGeometry) -> str:
    """"rectangle" for an axis-aligned four-corner polygon, else "polygon" (points are stored as squares and
    named where the shape field exists)."""
    if geometry.isMultipart():
        parts = geometry.asMultiPolygon()
        ring = parts[0][0] if len(parts) == 1 and len(parts[0]) == 1 else []
    else:
        polygon = geometry.asPolygon()
        ring = polygon[0] if len(polygon) == 1 else []
    if len(ring) == 5:
        xs = {round(p.x(), 6) for p in ring}
        ys = {round(p.y(), 6) for p in ring}
        if len(xs) == 2 and len(ys) == 2:
            return "rectangle"
    return "polygon"


def _fields(with_shape: bool = False) -> QgsFields:
    fields = QgsFields()
    fields.append(QgsField("class_id", field_type("Int")))
    fields.append(QgsField("class_name", field_type("QString")))
    fields.append(QgsField("colour", field_type("QString")))
    if with_shape:
        fields.append(QgsField(SHAPE_FIELD, field_type("QString")))
    return fields


def _write_table(path: str, table: str, geometry_type: QgsWkbTypes.Type, crs: QgsCoordinateReferenceSystem,
                 append: bool, with_shape: bool = False) -> None:
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = table
    if append:
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    writer = QgsVectorFileWriter.create(path, _fields(with_shape), geometry_type, crs,
                                        QgsProject.instance().transformContext(), options)
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
        _write_table(path, LABELS_TABLE, QgsWkbTypes.Type.MultiPolygon, crs, append=False, with_shape=True)
        _write_table(path, CLASSES_TABLE, QgsWkbTypes.Type.NoGeometry, crs, append=True)
        layer = QgsVectorLayer(f"{path}|layername={LABELS_TABLE}", name, "ogr")
        if not layer.isValid():
            raise LabelsError(f"Cannot open the new labels layer '{path}'")
        return cls(layer)

    @staticmethod
    def is_labels_layer(layer: QgsVectorLayer) -> bool:
        """A GeoPackage layer of polygons with the label fields and a classes table: adopted as it is."""
        path = layer.source().split("|")[0]
        if layer.providerType() != "ogr" or not path.lower().endswith(".gpkg"):
            return False
        if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
            return False
        if any(field.name() not in layer.fields().names() for field in _fields()):
            return False
        return QgsVectorLayer(f"{path}|layername={CLASSES_TABLE}", "classes", "ogr").isValid()

    @classmethod
    def copy_from(cls, layer: QgsVectorLayer, class_field: str, path: str, name: Optional[str] = None) -> LabelsLayer:
        """A new labels GeoPackage at ``path`` with ``layer``'s polygons, each of the class its ``class_field``
        names (features without a value are left out); ``layer`` itself is not touched."""
        if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
            raise LabelsError(f"The layer '{layer.name()}' does not hold polygons")
        if class_field not in layer.fields().names():
            raise LabelsError(f"The layer '{layer.name()}' has no field '{class_field}'")
        labels = cls.create(path, layer.crs(), name or f"{layer.name()} labels")
        classes: Dict[str, LabelClass] = {}
        for feature in layer.getFeatures():
            value = feature[class_field]
            if is_null(value) or str(value).strip() == "" or not feature.hasGeometry():
                continue
            key = str(value).strip()
            if key not in classes:
                classes[key] = labels.add_class(key)
            labels.add_label(feature.geometry(), layer.crs(), classes[key].class_id, guess_shape(feature.geometry()),
                             repaint=False)
        labels.layer.triggerRepaint()
        return labels

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
    def add_label(self, geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem, class_id: int,
                  shape: Optional[str] = None, repaint: bool = True) -> int:
        """Save one label (a polygon in ``crs``) for the class; ``shape`` says how it was drawn (polygon,
        rectangle, point); returns its feature id."""
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
        if SHAPE_FIELD in self.layer.fields().names():
            feature.setAttribute(SHAPE_FIELD, shape or guess_shape(geometry))
        ok, added = self.layer.dataProvider().addFeatures([feature])
        if not ok:
            raise LabelsError(f"Cannot save the label in '{self.path}'")
        if repaint:
            self.layer.updateExtents()
            self.layer.triggerRepaint()
        return added[0].id()

    def delete_label(self, feature_id: int) -> None:
        if not self.layer.dataProvider().deleteFeatures([feature_id]):
            raise LabelsError(f"Cannot delete the label in '{self.path}'")
        self.layer.triggerRepaint()

    def entries(self) -> List[LabelEntry]:
        """Every label with its class, shape and area (m², on the project's ellipsoid), in drawing order."""
        measure = QgsDistanceArea()
        measure.setSourceCrs(self.layer.crs(), QgsProject.instance().transformContext())
        measure.setEllipsoid(QgsProject.instance().ellipsoid() or "WGS84")
        names = {c.class_id: c.name for c in self.classes()}
        has_shape = SHAPE_FIELD in self.layer.fields().names()
        rows = []
        for feature in self.layer.getFeatures():
            geometry = feature.geometry()
            class_id = feature["class_id"]
            class_id = None if is_null(class_id) else int(class_id)
            shape = feature[SHAPE_FIELD] if has_shape else None
            name = feature["class_name"]
            rows.append(LabelEntry(feature.id(), class_id, names.get(class_id, "" if is_null(name) else str(name)),
                                   guess_shape(geometry) if is_null(shape) or not shape else str(shape),
                                   measure.measureArea(geometry)))
        return sorted(rows, key=lambda e: e.feature_id)

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
