"""QGIS without its desktop: an application, a main window with a map canvas, and an interface
object with the calls a plugin makes (toolbar, menus, docks, message bar).

Used by the plugin's tests and by ``make demo``. Real widgets, not mocks, so that a test can see
what a plugin left behind after ``unload``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Dict, Optional

from qgis.core import QgsApplication, QgsProject
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtCore import QObject, QSize, Qt
from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar, QVBoxLayout, QWidget

try:
    from qgis.PyQt.QtGui import QAction  # Qt6
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5

_APP: Optional[QgsApplication] = None


def start_qgis() -> QgsApplication:
    """Start QGIS once per process, with a throw-away profile and cache."""
    global _APP
    if _APP is not None:
        return _APP
    os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", tempfile.mkdtemp(prefix="terrafuse-qgis-profile-"))
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="terrafuse-cache-"))
    from qgis.testing import start_app

    _APP = start_app(cleanup=False)
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
    from processing.core.Processing import Processing

    Processing.initialize()
    return _APP


class HeadlessInterface(QObject):
    """The part of QgisInterface that plugins use, backed by real Qt widgets."""

    def __init__(self, width_px: int = 1400, height_px: int = 900) -> None:
        super().__init__()
        self.window = QMainWindow()
        self.window.resize(QSize(width_px, height_px))
        central = QWidget()
        layout = QVBoxLayout(central)
        self.message_bar = QgsMessageBar()
        self.canvas = QgsMapCanvas()
        self.canvas.setCanvasColor(Qt.GlobalColor.white)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.canvas)
        self.window.setCentralWidget(central)
        self.bridge = QgsLayerTreeMapCanvasBridge(QgsProject.instance().layerTreeRoot(), self.canvas)
        self.plugin_toolbar = QToolBar("Plugins")
        self.window.addToolBar(self.plugin_toolbar)
        self.raster_menu = QMenu("&Raster")
        self.window.menuBar().addMenu(self.raster_menu)
        self._submenus: Dict[str, QMenu] = {}

    def mainWindow(self) -> QMainWindow:
        return self.window

    def mapCanvas(self) -> QgsMapCanvas:
        return self.canvas

    def messageBar(self) -> QgsMessageBar:
        return self.message_bar

    def addToolBarIcon(self, action: QAction) -> None:
        self.plugin_toolbar.addAction(action)

    def removeToolBarIcon(self, action: QAction) -> None:
        self.plugin_toolbar.removeAction(action)

    def addPluginToRasterMenu(self, name: str, action: QAction) -> None:
        if name not in self._submenus:
            self._submenus[name] = self.raster_menu.addMenu(name)
        self._submenus[name].addAction(action)

    def removePluginRasterMenu(self, name: str, action: QAction) -> None:
        menu = self._submenus.get(name)
        if menu is None:
            return
        menu.removeAction(action)
        if not menu.actions():
            self.raster_menu.removeAction(menu.menuAction())
            del self._submenus[name]

    def addDockWidget(self, area: Qt.DockWidgetArea, dock) -> None:
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock) -> None:
        self.window.removeDockWidget(dock)

    def activeLayer(self):
        return None
