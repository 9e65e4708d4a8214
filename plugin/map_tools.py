"""Map tools that draw an area of interest on the canvas: a rectangle or a polygon."""

from __future__ import annotations

from typing import List

from qgis.core import QgsGeometry, QgsPointXY, QgsRectangle, QgsWkbTypes
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeyEvent

AREA_COLOUR = QColor(255, 87, 34)
AREA_FILL = QColor(255, 87, 34, 40)


def make_area_band(canvas: QgsMapCanvas) -> QgsRubberBand:
    band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
    band.setStrokeColor(AREA_COLOUR)
    band.setFillColor(AREA_FILL)
    band.setWidth(2)
    return band


class RectangleAreaTool(QgsMapTool):
    """Press, drag, release: emits ``areaDrawn`` with the rectangle in the canvas CRS."""

    areaDrawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self._band = make_area_band(canvas)
        self._start: QgsPointXY | None = None
        self.setCursor(Qt.CursorShape.CrossCursor)

    def canvasPressEvent(self, event: QgsMapMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._start = event.mapPoint()

    def canvasMoveEvent(self, event: QgsMapMouseEvent) -> None:
        if self._start is not None:
            self._band.setToGeometry(self._rectangle(event.mapPoint()), None)

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._start is None:
            return
        geometry = self._rectangle(event.mapPoint())
        self._start = None
        self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        if not geometry.isEmpty() and geometry.area() > 0:
            self.areaDrawn.emit(geometry)

    def _rectangle(self, end: QgsPointXY) -> QgsGeometry:
        return QgsGeometry.fromRect(QgsRectangle(self._start, end))

    def deactivate(self) -> None:
        self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        self._start = None
        super().deactivate()


class PolygonAreaTool(QgsMapTool):
    """Left clicks add vertices; a right click or Enter closes the polygon; Esc or Backspace edit.

    Emits ``areaDrawn`` with the polygon in the canvas CRS (at least three vertices).
    """

    areaDrawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self._band = make_area_band(canvas)
        self._points: List[QgsPointXY] = []
        self.setCursor(Qt.CursorShape.CrossCursor)

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._points.append(event.mapPoint())
            self._redraw()
        elif event.button() == Qt.MouseButton.RightButton:
            self._finish()

    def canvasMoveEvent(self, event: QgsMapMouseEvent) -> None:
        if self._points:
            self._redraw(event.mapPoint())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self._finish()
        elif event.key() == Qt.Key.Key_Escape:
            self._reset()
        elif event.key() == Qt.Key.Key_Backspace and self._points:
            self._points.pop()
            self._redraw()

    def _redraw(self, hover: QgsPointXY | None = None) -> None:
        points = self._points + ([hover] if hover is not None else [])
        self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        for point in points:
            self._band.addPoint(point, doUpdate=False)
        self._band.show()
        self._band.updatePosition()

    def _finish(self) -> None:
        points, self._points = self._points, []
        self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        if len(points) < 3:
            return
        geometry = QgsGeometry.fromPolygonXY([points + [points[0]]])
        if not geometry.isGeosValid():
            geometry = geometry.makeValid()
        if geometry.area() > 0:
            self.areaDrawn.emit(geometry)

    def _reset(self) -> None:
        self._points = []
        self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    def deactivate(self) -> None:
        self._reset()
        super().deactivate()
