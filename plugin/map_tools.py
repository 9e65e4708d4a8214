"""Map tools that draw on the canvas: a rectangle, a polygon or a point (areas of interest and labels).

Each tool stays on after a shape is drawn, so that shapes can be drawn one after another (as in SCP); Esc
drops the shape being drawn, or, with none under way, hands the canvas back (the tool is unset).
"""

from __future__ import annotations

from typing import List

from qgis.core import QgsGeometry, QgsPointXY, QgsRectangle, QgsWkbTypes
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapTool, QgsMapToolEmitPoint, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeyEvent

AREA_COLOUR = QColor(255, 87, 34)
AREA_FILL = QColor(255, 87, 34, 40)
POLYGON = QgsWkbTypes.GeometryType.PolygonGeometry


def make_area_band(canvas: QgsMapCanvas) -> QgsRubberBand:
    band = QgsRubberBand(canvas, POLYGON)
    band.setStrokeColor(AREA_COLOUR)
    band.setFillColor(AREA_FILL)
    band.setWidth(2)
    return band


def _release(tool: QgsMapTool) -> None:
    """Esc with nothing under way: the tool lets go of the canvas (its button unchecks on ``deactivated``)."""
    canvas = tool.canvas()
    if canvas.mapTool() is tool:
        canvas.unsetMapTool(tool)


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
        self._band.reset(POLYGON)
        if not geometry.isEmpty() and geometry.area() > 0:
            self.areaDrawn.emit(geometry)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            if self._start is not None:
                self._start = None
                self._band.reset(POLYGON)
            else:
                _release(self)

    def _rectangle(self, end: QgsPointXY) -> QgsGeometry:
        return QgsGeometry.fromRect(QgsRectangle(self._start, end))

    def deactivate(self) -> None:
        self._band.reset(POLYGON)
        self._start = None
        super().deactivate()


class PolygonAreaTool(QgsMapTool):
    """Left clicks add vertices; a right click or Enter closes the polygon; Backspace drops the last vertex, Esc
    the polygon (or, with none under way, the tool).

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
            if self._points:
                self._reset()
            else:
                _release(self)
        elif event.key() == Qt.Key.Key_Backspace and self._points:
            self._points.pop()
            self._redraw()

    def _redraw(self, hover: QgsPointXY | None = None) -> None:
        points = self._points + ([hover] if hover is not None else [])
        self._band.reset(POLYGON)
        for point in points:
            self._band.addPoint(point, doUpdate=False)
        self._band.show()
        self._band.updatePosition()

    def _finish(self) -> None:
        points, self._points = self._points, []
        self._band.reset(POLYGON)
        if len(points) < 3:
            return
        geometry = QgsGeometry.fromPolygonXY([points + [points[0]]])
        if not geometry.isGeosValid():
            geometry = geometry.makeValid()
        if geometry.area() > 0:
            self.areaDrawn.emit(geometry)

    def _reset(self) -> None:
        self._points = []
        self._band.reset(POLYGON)

    def deactivate(self) -> None:
        self._reset()
        super().deactivate()


class PointTool(QgsMapToolEmitPoint):
    """Left clicks emit ``canvasClicked`` (as QGIS's point tool does); Esc hands the canvas back."""

    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            _release(self)
