"""The dock's Input section: the raster (exported first when it is not a file) and the area of the job."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qgis.core import QgsGeometry, QgsMapLayerProxyModel, QgsRasterLayer, QgsWkbTypes
from qgis.PyQt.QtCore import QObject

from ..area import AreaError, AreaSelection, area_from_layer
from ..export import ExportError, export_raster, is_file_raster
from ..map_tools import PolygonAreaTool, RectangleAreaTool, make_area_band
from ..tasks import PreparationError

#: (key, label) of the ways to choose an area.
AREA_MODES = (
    ("whole", "Whole raster"),
    ("canvas", "Canvas extent"),
    ("rectangle", "Draw a rectangle"),
    ("polygon", "Draw a polygon"),
    ("layer", "Polygons of a layer"),
)


class InputSection(QObject):
    """Behaviour of the Input widgets of ``dock``: the raster, the area mode, drawing and the area's outline."""

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.canvas = dock.canvas
        self._drawn: Optional[AreaSelection] = None
        self.band = make_area_band(self.canvas)
        self.rectangle_tool = RectangleAreaTool(self.canvas)
        self.polygon_tool = PolygonAreaTool(self.canvas)
        for tool in (self.rectangle_tool, self.polygon_tool):
            tool.areaDrawn.connect(self._on_area_drawn)
            tool.deactivated.connect(lambda: dock.drawAreaButton.setChecked(False))
        dock.rasterCombo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        dock.areaLayerCombo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        for key, label in AREA_MODES:
            dock.areaModeCombo.addItem(label, key)
        dock.areaModeCombo.currentIndexChanged.connect(self._on_area_mode_changed)
        dock.rasterCombo.layerChanged.connect(self._on_raster_changed)
        dock.areaLayerCombo.layerChanged.connect(self.update_area_label)
        dock.selectedOnlyCheck.toggled.connect(self.update_area_label)
        dock.drawAreaButton.toggled.connect(self._on_draw_toggled)
        dock.clearAreaButton.clicked.connect(self.clear_area)
        self._on_area_mode_changed()
        self._on_raster_changed()

    @property
    def raster(self) -> Optional[QgsRasterLayer]:
        layer = self.dock.rasterCombo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) else None

    @property
    def area_mode(self) -> str:
        return self.dock.areaModeCombo.currentData()

    def set_area_mode(self, key: str) -> None:
        self.dock.areaModeCombo.setCurrentIndex(self.dock.areaModeCombo.findData(key))

    def _on_raster_changed(self) -> None:
        """A layer that is not a file (XYZ, WMS...) is exported first: show its resolution."""
        layer = self.raster
        exported = layer is not None and not is_file_raster(layer)
        self.dock.gsdLabel.setVisible(exported)
        self.dock.gsdSpin.setVisible(exported)

    def _on_area_mode_changed(self) -> None:
        dock, mode = self.dock, self.area_mode
        drawing = mode in ("rectangle", "polygon")
        dock.drawAreaButton.setEnabled(drawing)
        dock.clearAreaButton.setEnabled(drawing)
        dock.areaLayerCombo.setEnabled(mode == "layer")
        dock.selectedOnlyCheck.setEnabled(mode == "layer")
        if dock.drawAreaButton.isChecked():
            dock.drawAreaButton.setChecked(False)
        if drawing and self._drawn is None:
            dock.drawAreaButton.setChecked(True)  # choosing "draw" means drawing now
        self.update_area_label()

    def _on_draw_toggled(self, checked: bool) -> None:
        tool = self.rectangle_tool if self.area_mode == "rectangle" else self.polygon_tool
        if checked:
            self.canvas.setMapTool(tool)
        else:
            for candidate in (self.rectangle_tool, self.polygon_tool):
                if self.canvas.mapTool() is candidate:
                    self.canvas.unsetMapTool(candidate)

    def _on_area_drawn(self, geometry: QgsGeometry) -> None:
        crs = self.canvas.mapSettings().destinationCrs()
        source = "Drawn rectangle" if self.area_mode == "rectangle" else "Drawn polygon"
        self._drawn = AreaSelection(geometry, crs, source)
        self.dock.drawAreaButton.setChecked(False)  # one area: the tool's work is done
        self.update_area_label()

    def clear_area(self) -> None:
        self._drawn = None
        self.update_area_label()

    def current_area(self) -> Optional[AreaSelection]:
        """The area the next job covers; ``None`` for the whole raster."""
        mode = self.area_mode
        if mode == "whole":
            return None
        if mode == "canvas":
            crs = self.canvas.mapSettings().destinationCrs()
            return AreaSelection(QgsGeometry.fromRect(self.canvas.extent()), crs, "Canvas extent")
        if mode in ("rectangle", "polygon"):
            if self._drawn is None:
                raise AreaError("Draw the area on the map first (click Draw)")
            return self._drawn
        layer = self.dock.areaLayerCombo.currentLayer()
        if layer is None:
            raise AreaError("Choose a polygon layer for the area")
        return area_from_layer(layer, self.dock.selectedOnlyCheck.isChecked())

    def update_area_label(self) -> None:
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        try:
            area = self.current_area()
        except AreaError as exc:
            self.dock.areaLabel.setText(str(exc))
            return
        if area is None:
            self.dock.areaLabel.setText("Area: the whole raster")
            return
        self.dock.areaLabel.setText(f"Area: {area.summary()}")
        if area.source != "Canvas extent":
            self.band.setToGeometry(area.in_crs(self.canvas.mapSettings().destinationCrs()), None)

    def export_step(self, has_image: bool) -> Optional[Callable[[Dict[str, Any]], Dict[str, Any]]]:
        """For a raster that is not a file, the step that exports it in the task's thread; else None."""
        layer = self.raster
        if not has_image or layer is None or is_file_raster(layer):
            return None
        area, gsd_m = self.current_area(), self.dock.gsdSpin.value()
        layer = layer.clone()  # the task's own copy: providers are not shared across threads

        def export(params: Dict[str, Any]) -> Dict[str, Any]:
            try:
                return {**params, "image": export_raster(layer, area, gsd_m)}
            except ExportError as exc:
                raise PreparationError(str(exc)) from None

        return export

    def tools(self):
        return [self.rectangle_tool, self.polygon_tool]
