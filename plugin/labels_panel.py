"""The dock's Labels section: choose or create the labels layer, manage its classes, draw labels one after
another (the drawing tool stays on until another tool is chosen or Esc is pressed), and manage the labels in a
list (class, shape, area) with select, zoom to, delete and undo of the last label.

A polygon layer that is not a labels layer yet is never edited: the user says which field names the classes
and its polygons are copied into a new labels GeoPackage beside it.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsColorDialog
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QListWidgetItem,
    QMessageBox,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
)

from .labels import LabelsError, LabelsLayer, area_text
from .map_tools import PointTool, PolygonAreaTool, RectangleAreaTool
from .settings import profile_folder

POINT_LABEL_PX = 3  # a point label covers this many raster pixels on a side
USER_ROLE = Qt.ItemDataRole.UserRole


def colour_icon(colour: str) -> QIcon:
    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor(colour))
    return QIcon(pixmap)


def copy_path(layer: QgsVectorLayer) -> str:
    """Where a layer adopted as labels is copied: ``<its name>-labels.gpkg`` beside its file (else in the
    profile), never over an existing file."""
    source = layer.source().split("|")[0]
    folder = os.path.dirname(source) if os.path.isfile(source) else ""
    if not folder or not os.access(folder, os.W_OK):
        folder = os.path.join(profile_folder(), "labels")
        os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(source))[0] if os.path.isfile(source) else layer.name()
    path = os.path.join(folder, f"{stem}-labels.gpkg")
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(folder, f"{stem}-labels-{suffix}.gpkg")
    return path


class LabelsPanel(QObject):
    """Behaviour of the Labels widgets of ``dock``; ``message`` carries errors for the dock's status."""

    message = pyqtSignal(str)
    notice = pyqtSignal(str)  # what went well, for the dock's status line (no warning)
    labelsChanged = pyqtSignal()

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.canvas = dock.canvas
        self.labels: Optional[LabelsLayer] = None
        self.drawn: List[int] = []  # feature ids drawn in this session, newest last: what Undo takes back
        self._tools = {
            dock.drawLabelPolygonButton: PolygonAreaTool(self.canvas),
            dock.drawLabelRectangleButton: RectangleAreaTool(self.canvas),
            dock.drawLabelPointButton: PointTool(self.canvas),
        }
        self._shapes = {dock.drawLabelPolygonButton: "polygon", dock.drawLabelRectangleButton: "rectangle",
                         dock.drawLabelPointButton: "point"}
        for button, tool in self._tools.items():
            button.toggled.connect(lambda checked, b=button: self._on_draw_toggled(b, checked))
            button.setToolTip(f"Draw {self._shapes[button]} labels of the selected class, one after another; "
                              "Esc or another map tool stops")
            tool.deactivated.connect(lambda b=button: b.setChecked(False))
            if isinstance(tool, PointTool):
                tool.canvasClicked.connect(self._on_point)
            else:
                tool.areaDrawn.connect(lambda geometry, b=button: self.add_label(geometry, self._shapes[b]))
        self._make_label_list()
        dock.labelsLayerCombo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        dock.labelsLayerCombo.setAllowEmptyLayer(True)
        dock.labelsLayerCombo.setLayer(None)
        dock.labelsLayerCombo.layerChanged.connect(self.adopt)
        dock.newLabelsButton.clicked.connect(self._ask_new_labels)
        dock.addClassButton.clicked.connect(self._ask_add_class)
        dock.renameClassButton.clicked.connect(self._ask_rename_class)
        dock.colourClassButton.clicked.connect(self._ask_recolour_class)
        dock.deleteClassButton.clicked.connect(self._ask_delete_class)
        dock.classList.currentRowChanged.connect(lambda _: self._update_buttons())
        self._update_buttons()

    def _make_label_list(self) -> None:
        dock = self.dock
        self.labelList = QTreeWidget(dock.labelsGroup)
        self.labelList.setObjectName("labelList")
        self.labelList.setColumnCount(3)
        self.labelList.setHeaderLabels(["Class", "Shape", "Area"])
        self.labelList.setRootIsDecorated(False)
        self.labelList.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.labelList.setMaximumHeight(140)
        header = self.labelList.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.labelList.itemSelectionChanged.connect(self._on_label_selection)
        self.labelList.itemDoubleClicked.connect(lambda *_: self.zoom_to_selected())
        self.labelCountLabel = QLabel("", dock.labelsGroup)
        self.labelCountLabel.setObjectName("labelCountLabel")
        buttons = QHBoxLayout()
        self.zoomLabelButton = QToolButton(text="Zoom to")
        self.deleteLabelButton = QToolButton(text="Delete")
        self.undoLabelButton = QToolButton(text="Undo last")
        for button, name, tip in (
                (self.zoomLabelButton, "zoomLabelButton", "Zoom the map to the selected labels (or double-click one)"),
                (self.deleteLabelButton, "deleteLabelButton", "Delete the selected labels"),
                (self.undoLabelButton, "undoLabelButton", "Take back the label drawn last")):
            button.setObjectName(name)
            button.setToolTip(tip)
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.zoomLabelButton.clicked.connect(self.zoom_to_selected)
        self.deleteLabelButton.clicked.connect(self.delete_selected)
        self.undoLabelButton.clicked.connect(self.undo_last)
        dock.labelsLayout.addWidget(self.labelCountLabel)
        dock.labelsLayout.addWidget(self.labelList)
        dock.labelsLayout.addLayout(buttons)

    # -- the layer ------------------------------------------------------------------------
    def adopt(self, layer: Optional[QgsVectorLayer]) -> None:
        """Use ``layer`` as the labels layer: as it is when it is one, else (after asking which field names
        the classes) a copy of it in a new labels GeoPackage."""
        self._stop_drawing()
        self.labels = None
        self.drawn = []
        if layer is not None:
            try:
                if isinstance(layer, QgsVectorLayer) and not LabelsLayer.is_labels_layer(layer):
                    self._adopt_a_copy(layer)
                    return
                self.labels = LabelsLayer(layer)
                self.labels.apply_style()
            except LabelsError as exc:
                self.message.emit(str(exc))
        self.refresh_classes()

    def _adopt_a_copy(self, layer: QgsVectorLayer) -> None:
        fields = [f.name() for f in layer.fields() if f.name().lower() not in ("fid", "ogc_fid")]
        field = self.ask_class_field(layer, fields) if fields else None
        if not field:
            self.dock.labelsLayerCombo.blockSignals(True)
            self.dock.labelsLayerCombo.setLayer(None)
            self.dock.labelsLayerCombo.blockSignals(False)
            self.message.emit(f"'{layer.name()}' was left as it is: choose the field that names its classes to "
                              "copy it into a labels layer, or create one with New…")
            self.refresh_classes()
            return
        labels = LabelsLayer.copy_from(layer, field, copy_path(layer))
        QgsProject.instance().addMapLayer(labels.layer)
        self.dock.labelsLayerCombo.setLayer(labels.layer)  # adopts the copy
        self.dock.labelsGroup.setCollapsed(False)
        self.notice.emit(f"Labels copied from '{layer.name()}' (classes from '{field}') into {labels.path}; "
                         "the original is unchanged")

    def ask_class_field(self, layer: QgsVectorLayer, fields: List[str]) -> Optional[str]:
        """The field that names the classes, asked of the user (None: cancelled)."""
        current = fields.index("class_name") if "class_name" in fields else 0
        field, ok = QInputDialog.getItem(
            self.dock, "Use as labels",
            f"'{layer.name()}' is not a labels layer yet. Which field names the classes?\n"
            "Its polygons are copied into a new labels GeoPackage; the layer itself is not changed.",
            fields, current, False)
        return field if ok and field else None

    def create_labels(self, path: str) -> LabelsLayer:
        """A new labels GeoPackage in the raster's CRS (else the project's), added to the map and adopted."""
        raster = self.dock.rasterCombo.currentLayer()
        crs = raster.crs() if isinstance(raster, QgsRasterLayer) else QgsProject.instance().crs()
        labels = LabelsLayer.create(path, crs)
        QgsProject.instance().addMapLayer(labels.layer)
        self.dock.labelsLayerCombo.setLayer(labels.layer)  # adopts it
        self.dock.labelsGroup.setCollapsed(False)
        return self.labels

    def _ask_new_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.dock, "New labels layer", "labels.gpkg", "GeoPackage (*.gpkg)")
        if path:
            try:
                self.create_labels(path)
            except LabelsError as exc:
                self.message.emit(str(exc))

    # -- classes ----------------------------------------------------------------------------
    @property
    def selected_class_id(self) -> Optional[int]:
        item = self.dock.classList.currentItem()
        return None if item is None else item.data(USER_ROLE)

    def select_class(self, class_id: int) -> None:
        for row in range(self.dock.classList.count()):
            if self.dock.classList.item(row).data(USER_ROLE) == class_id:
                self.dock.classList.setCurrentRow(row)

    def refresh_classes(self) -> None:
        """The class list and the label list from the layer; the selected class and the drawing tool stay."""
        class_list = self.dock.classList
        selected = self.selected_class_id
        class_list.blockSignals(True)  # a rebuilt list is not a new choice: drawing goes on
        try:
            class_list.clear()
            if self.labels is not None:
                counts = self.labels.counts()
                for label_class in self.labels.classes():
                    n = counts.get(label_class.class_id, 0)
                    text = f"{label_class.name}  ({n} label{'s' * (n != 1)})"
                    item = QListWidgetItem(colour_icon(label_class.colour), text)
                    item.setData(USER_ROLE, label_class.class_id)
                    class_list.addItem(item)
                if selected is not None:
                    self.select_class(selected)
                if class_list.currentRow() < 0 and class_list.count():
                    class_list.setCurrentRow(0)
        finally:
            class_list.blockSignals(False)
        self.refresh_label_list()
        self._update_buttons()
        self.labelsChanged.emit()

    def refresh_label_list(self) -> None:
        self.labelList.clear()
        entries = self.labels.entries() if self.labels is not None else []
        colours = {c.class_id: c.colour for c in self.labels.classes()} if self.labels is not None else {}
        for entry in entries:
            item = QTreeWidgetItem([entry.class_name, entry.shape, area_text(entry.area_m2)])
            item.setData(0, USER_ROLE, entry.feature_id)
            if entry.class_id in colours:
                item.setIcon(0, colour_icon(colours[entry.class_id]))
            item.setTextAlignment(2, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            self.labelList.addTopLevelItem(item)
        if entries:
            self.labelList.scrollToItem(self.labelList.topLevelItem(len(entries) - 1))
        n = len(entries)
        self.labelCountLabel.setText(f"{n} label{'s' * (n != 1)}" if self.labels is not None else "")

    def _update_buttons(self) -> None:
        has_layer = self.labels is not None
        has_class = self.selected_class_id is not None
        self.dock.addClassButton.setEnabled(has_layer)
        for button in (self.dock.renameClassButton, self.dock.colourClassButton, self.dock.deleteClassButton,
                       *self._tools):
            button.setEnabled(has_class)
        if not has_class:
            self._stop_drawing()
        selected = bool(self.labelList.selectedItems())
        self.zoomLabelButton.setEnabled(selected)
        self.deleteLabelButton.setEnabled(selected)
        self.undoLabelButton.setEnabled(has_layer and bool(self.drawn))

    def _run(self, action, *args):
        try:
            result = action(*args)
        except LabelsError as exc:
            self.message.emit(str(exc))
            return None
        self.refresh_classes()
        return result

    def add_class(self, name: str, colour: Optional[str] = None):
        label_class = self._run(self.labels.add_class, name, colour)
        if label_class is not None:
            self.select_class(label_class.class_id)
        return label_class

    def _ask_add_class(self) -> None:
        name, ok = QInputDialog.getText(self.dock, "Add a class", "Class name:")
        if ok and name:
            self.add_class(name)

    def _ask_rename_class(self) -> None:
        class_id = self.selected_class_id
        current = self.labels.get_class(class_id)
        name, ok = QInputDialog.getText(self.dock, "Rename the class", "Class name:", text=current.name)
        if ok and name:
            self._run(self.labels.rename_class, class_id, name)

    def _ask_recolour_class(self) -> None:
        class_id = self.selected_class_id
        colour = QgsColorDialog.getColor(QColor(self.labels.get_class(class_id).colour), self.dock, "Class colour")
        if colour.isValid():
            self._run(self.labels.recolour_class, class_id, colour.name())

    def _ask_delete_class(self) -> None:
        class_id = self.selected_class_id
        label_class = self.labels.get_class(class_id)
        n = self.labels.counts().get(class_id, 0)
        answer = QMessageBox.question(self.dock, "Delete the class",
                                      f"Delete the class '{label_class.name}' and its {n} label(s)?")
        if answer == QMessageBox.StandardButton.Yes:
            self._run(self.labels.delete_class, class_id)

    # -- drawing ----------------------------------------------------------------------------
    def _on_draw_toggled(self, button, checked: bool) -> None:
        tool = self._tools[button]
        if checked:
            for other in self._tools:
                if other is not button:
                    other.setChecked(False)
            self.canvas.setMapTool(tool)
        elif self.canvas.mapTool() is tool:
            self.canvas.unsetMapTool(tool)

    def _stop_drawing(self) -> None:
        for button in self._tools:
            button.setChecked(False)

    def _on_point(self, point: QgsPointXY, button) -> None:
        if button == Qt.MouseButton.LeftButton:
            self.add_label(LabelsLayer.point_square(point, self._point_size()), "point")

    def _point_size(self) -> float:
        """POINT_LABEL_PX raster pixels in the canvas's units, else ten screen pixels."""
        raster = self.dock.rasterCombo.currentLayer()
        if isinstance(raster, QgsRasterLayer) and raster.crs() == self.canvas.mapSettings().destinationCrs():
            return POINT_LABEL_PX * raster.rasterUnitsPerPixelX()
        return 10 * self.canvas.mapUnitsPerPixel()

    def add_label(self, geometry: QgsGeometry, shape: Optional[str] = None) -> Optional[int]:
        class_id = self.selected_class_id
        if self.labels is None or class_id is None:
            self.message.emit("Choose a labels layer and a class first")
            return None
        feature_id = self._run(self.labels.add_label, geometry, self.canvas.mapSettings().destinationCrs(),
                               class_id, shape)
        if feature_id is not None:
            self.drawn.append(feature_id)
            self._update_buttons()
        return feature_id

    # -- the label list -----------------------------------------------------------------------
    def selected_label_ids(self) -> List[int]:
        return [item.data(0, USER_ROLE) for item in self.labelList.selectedItems()]

    def select_labels(self, feature_ids: List[int]) -> None:
        wanted = set(feature_ids)
        for row in range(self.labelList.topLevelItemCount()):
            item = self.labelList.topLevelItem(row)
            item.setSelected(item.data(0, USER_ROLE) in wanted)

    def _on_label_selection(self) -> None:
        """The list's selection is the layer's: the labels light up on the map."""
        if self.labels is not None:
            self.labels.layer.selectByIds(self.selected_label_ids())
        self._update_buttons()

    def zoom_to_selected(self) -> None:
        ids = self.selected_label_ids()
        if self.labels is None or not ids:
            return
        box = self.labels.layer.boundingBoxOfSelected() if self.labels.layer.selectedFeatureCount() else None
        if box is None or box.isEmpty():
            features = self.labels.layer.getFeatures(QgsFeatureRequest().setFilterFids(ids))
            geometries = [f.geometry() for f in features if f.hasGeometry()]
            box = QgsGeometry.unaryUnion(geometries).boundingBox() if geometries else None
        if box is None:
            return
        transform = QgsCoordinateTransform(self.labels.layer.crs(), self.canvas.mapSettings().destinationCrs(),
                                           QgsProject.instance())
        extent = transform.transformBoundingBox(box)
        extent.scale(3.0)  # the label with its surroundings
        self.canvas.setExtent(extent)
        self.canvas.refresh()

    def delete_selected(self) -> int:
        ids = self.selected_label_ids()
        if self.labels is None:
            return 0
        try:
            for feature_id in ids:
                self.labels.delete_label(feature_id)
                if feature_id in self.drawn:
                    self.drawn.remove(feature_id)
        except LabelsError as exc:
            self.message.emit(str(exc))
        self.refresh_classes()
        return len(ids)

    def undo_last(self) -> Optional[int]:
        """Take back the label drawn last (in this session)."""
        if self.labels is None or not self.drawn:
            return None
        feature_id = self.drawn.pop()
        self._run(self.labels.delete_label, feature_id)
        return feature_id

    def tools(self):
        return list(self._tools.values())
