"""Terrafuse QGIS plugin entry point.

The folder may be installed under any name, so every import inside the plugin is relative.
"""


def classFactory(iface):
    from .plugin.plugin import TerrafusePlugin

    return TerrafusePlugin(iface)
