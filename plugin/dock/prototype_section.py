"""The dock's Prototype map section: the map Identify and Opacity act on, and the identify window beside the map."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QObject

from ..prototype_identify import PrototypeIdentifyPanel, PrototypeIdentifyTool, identify_html


class PrototypeSection(QObject):
    """Behaviour of the Prototype map widgets of ``dock``."""

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.canvas = dock.canvas
        dock.prototypeLayerCombo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        dock.prototypeGroup.setCollapsed(True)  # opened when a prototype map arrives
        self.identify_tool = PrototypeIdentifyTool(self.canvas, dock.prototypeLayerCombo.currentLayer)
        self.identify_panel = PrototypeIdentifyPanel(dock)
        self.identify_tool.identified.connect(self.show_identified)
        self.identify_tool.failed.connect(lambda message: dock.show_status(message, error=True))
        self.identify_tool.deactivated.connect(lambda: dock.identifyPrototypeButton.setChecked(False))
        dock.identifyPrototypeButton.toggled.connect(self._on_identify_toggled)
        dock.prototypeOpacitySlider.valueChanged.connect(self.set_opacity)
        dock.prototypeLayerCombo.layerChanged.connect(self._on_layer_changed)

    def show_map(self, result: Dict[str, Any]) -> None:
        """Offer the new prototype map to Identify and Opacity."""
        path = result.get("outputs", {}).get("prototypes")
        for layer in QgsProject.instance().mapLayers().values():
            same = path and os.path.normpath(layer.source()) == os.path.normpath(path)
            if isinstance(layer, QgsRasterLayer) and same:
                self.dock.prototypeLayerCombo.setLayer(layer)
        self.dock.prototypeGroup.setCollapsed(False)

    def show_identified(self, info: Optional[Dict[str, Any]]) -> None:
        """A click's prototypes: in the identify window beside the map (away from the click), and a short
        version in the dock's result pane."""
        self.dock.results.set_page("prototypes", identify_html(info, compact=True))
        self.identify_panel.show_info(info, self.canvas, self.identify_tool.last_click)

    def _on_identify_toggled(self, checked: bool) -> None:
        if checked:
            self.canvas.setMapTool(self.identify_tool)
        elif self.canvas.mapTool() is self.identify_tool:
            self.canvas.unsetMapTool(self.identify_tool)

    def _on_layer_changed(self) -> None:
        layer = self.dock.prototypeLayerCombo.currentLayer()
        if isinstance(layer, QgsRasterLayer) and layer.renderer() is not None:
            self.dock.prototypeOpacitySlider.blockSignals(True)
            self.dock.prototypeOpacitySlider.setValue(round(100 * layer.renderer().opacity()))
            self.dock.prototypeOpacitySlider.blockSignals(False)

    def set_opacity(self, percent: int) -> None:
        """The slider acts on the layer's own opacity (as Layer Properties > Transparency does)."""
        layer = self.dock.prototypeLayerCombo.currentLayer()
        if isinstance(layer, QgsRasterLayer) and layer.renderer() is not None:
            layer.renderer().setOpacity(percent / 100.0)
            layer.triggerRepaint()
            layer.emitStyleChanged()
