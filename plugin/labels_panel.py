"""The dock's Labels section: choose or create the labels layer, manage its classes, draw labels."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsGeometry, QgsMapLayerProxyModel, QgsPointXY, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsColorDialog, QgsMapToolEmitPoint
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import QFileDialog, QInputDialog, QListWidgetItem, QMessageBox

from .labels import LabelsError, LabelsLayer
from .map_tools import PolygonAreaTool, RectangleAreaTool

POINT_LABEL_PX = 3  # a point label covers this many raster pixels on a side


def colour_icon(colour: str) -> QIcon:
    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor(colour))
    return QIcon(pixmap)


class LabelsPanel(QObject):
    """Behaviour of the Labels widgets of ``dock``; ``message`` carries errors for the dock's status."""

    message = pyqtSignal(str)
    labelsChanged = pyqtSignal()

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.canvas = dock.canvas
        self.labels: Optional[LabelsLayer] = None
        self._tools = {
            dock.drawLabelPolygonButton: PolygonAreaTool(self.canvas),
            dock.drawLabelRectangleButton: RectangleAreaTool(self.canvas),
            dock.drawLabelPointButton: QgsMapToolEmitPoint(self.canvas),
        }
        for button, tool in self._tools.items():
            button.toggled.connect(lambda checked, b=button: self._on_draw_toggled(b, checked))
            tool.deactivated.connect(lambda b=button: b.setChecked(False))
            if isinstance(tool, QgsMapToolEmitPoint):
                tool.canvasClicked.connect(self._on_point)
            else:
                tool.areaDrawn.connect(self._on_drawn)
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

    # -- the layer ------------------------------------------------------------------------
    def adopt(self, layer: Optional[QgsVectorLayer]) -> None:
        self._stop_drawing()
        self.labels = None
        if layer is not None:
            try:
                self.labels = LabelsLayer(layer)
                self.labels.apply_style()
            except LabelsError as exc:
                self.message.emit(str(exc))
        self.refresh_classes()

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
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def select_class(self, class_id: int) -> None:
        for row in range(self.dock.classList.count()):
            if self.dock.classList.item(row).data(Qt.ItemDataRole.UserRole) == class_id:
                self.dock.classList.setCurrentRow(row)

    def refresh_classes(self) -> None:
        selected = self.selected_class_id
        self.dock.classList.clear()
        if self.labels is not None:
            counts = self.labels.counts()
            for label_class in self.labels.classes():
                n = counts.get(label_class.class_id, 0)
                text = f"{label_class.name}  ({n} label{'s' * (n != 1)})"
                item = QListWidgetItem(colour_icon(label_class.colour), text)
                item.setData(Qt.ItemDataRole.UserRole, label_class.class_id)
                self.dock.classList.addItem(item)
            if selected is not None:
                self.select_class(selected)
            if self.dock.classList.currentRow() < 0 and self.dock.classList.count():
                self.dock.classList.setCurrentRow(0)
        self._update_buttons()
        self.labelsChanged.emit()

    def _update_buttons(self) -> None:
        has_layer = self.labels is not None
        has_class = self.selected_class_id is not None
        self.dock.addClassButton.setEnabled(has_layer)
        for button in (self.dock.renameClassButton, self.dock.colourClassButton, self.dock.deleteClassButton,
                       *self._tools):
            button.setEnabled(has_class)
        if not has_class:
            self._stop_drawing()

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

    def _on_drawn(self, geometry: QgsGeometry) -> None:
        self.add_label(geometry)

    def _on_point(self, point: QgsPointXY, button) -> None:
        if button == Qt.MouseButton.LeftButton:
            self.add_label(LabelsLayer.point_square(point, self._point_size()))

    def _point_size(self) -> float:
        """POINT_LABEL_PX raster pixels in the canvas's units, else ten screen pixels."""
        raster = self.dock.rasterCombo.currentLayer()
        if isinstance(raster, QgsRasterLayer) and raster.crs() == self.canvas.mapSettings().destinationCrs():
            return POINT_LABEL_PX * raster.rasterUnitsPerPixelX()
        return 10 * self.canvas.mapUnitsPerPixel()

    def add_label(self, geometry: QgsGeometry) -> Optional[int]:
        class_id = self.selected_class_id
        if self.labels is None or class_id is None:
            self.message.emit("Choose a labels layer and a class first")
            return None
        return self._run(self.labels.add_label, geometry, self.canvas.mapSettings().destinationCrs(), class_id)

    def tools(self):
        return list(self._tools.values())
