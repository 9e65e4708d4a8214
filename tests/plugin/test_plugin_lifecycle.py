"""The plugin loads in real QGIS and leaves nothing behind when unloaded."""

from __future__ import annotations

import importlib

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QDockWidget

from tests.conftest import PACKAGE_NAME
from tests.plugin.conftest import flush_deletes


def our_docks(iface) -> list[QDockWidget]:
    return [d for d in iface.window.findChildren(QDockWidget) if d.objectName() == "TerrafuseDock"]


def test_init_gui_adds_button_menu_dock_and_provider(plugin, iface) -> None:
    assert plugin.action in iface.plugin_toolbar.actions()
    submenus = [a.menu() for a in iface.raster_menu.actions() if a.menu() is not None]
    assert [m.title() for m in submenus] == ["&Terrafuse"]
    assert plugin.action in submenus[0].actions()
    assert our_docks(iface) == [plugin.dock]
    provider = QgsApplication.processingRegistry().providerById("terrafuse")
    assert provider is not None
    assert {"terrafuse:info", "terrafuse:inspect"} <= {a.id() for a in provider.algorithms()}


def test_the_button_shows_and_hides_the_dock(plugin, qtbot) -> None:
    assert not plugin.dock.isVisible()
    plugin.action.trigger()
    qtbot.waitUntil(plugin.dock.isVisible)
    plugin.action.trigger()
    qtbot.waitUntil(lambda: not plugin.dock.isVisible())


def test_unload_leaves_nothing(iface, qtbot) -> None:
    scene_items_before_plugin = len(iface.canvas.scene().items())
    plugin = importlib.import_module(PACKAGE_NAME).classFactory(iface)
    plugin.initGui()
    plugin.action.trigger()
    plugin.dock.set_area_mode("polygon")  # activates the polygon tool
    assert iface.canvas.mapTool() is not None
    plugin.client.run("info", {})  # a live worker
    worker = plugin.client
    plugin.unload()
    flush_deletes()
    assert iface.plugin_toolbar.actions() == []
    assert iface.raster_menu.actions() == []
    assert our_docks(iface) == []
    assert QgsApplication.processingRegistry().providerById("terrafuse") is None
    assert iface.canvas.mapTool() is None
    assert len(iface.canvas.scene().items()) == scene_items_before_plugin
    assert not worker.alive
