"""Real QGIS, headless: one application per session, a fresh interface and project per test."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from scripts.qgis_headless import HeadlessInterface, start_qgis
from tests.conftest import PACKAGE_NAME

QGIS_APP = start_qgis()  # before pytest-qt makes a plain QApplication

from qgis.core import QgsProject, QgsRasterLayer, QgsSettings  # noqa: E402 - needs the application above
from qgis.PyQt.QtCore import QCoreApplication, QEvent  # noqa: E402


def show_layer(iface, layer) -> None:
    """Put the canvas (and the project) in the layer's CRS, zoomed to it, as a user would."""
    QgsProject.instance().setCrs(layer.crs())
    iface.canvas.setDestinationCrs(layer.crs())
    iface.canvas.setExtent(layer.extent())
    iface.canvas.refresh()


def flush_deletes() -> None:
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QCoreApplication.processEvents()


_CLOSED_INTERFACES: list[HeadlessInterface] = []


@pytest.fixture
def iface() -> Iterator[HeadlessInterface]:
    interface = HeadlessInterface()
    interface.window.show()
    yield interface
    QgsProject.instance().clear()
    interface.window.close()
    # Kept, not deleted: deleting a main window whose canvas has finished renders in flight
    # crashes QGIS 3.22 at random; a closed window costs nothing until the session ends.
    _CLOSED_INTERFACES.append(interface)


@pytest.fixture
def plugin(iface: HeadlessInterface):
    QgsSettings().remove("terrafuse")  # every test starts from the default settings
    package = importlib.import_module(PACKAGE_NAME)
    instance = package.classFactory(iface)
    instance.initGui()
    yield instance
    if instance.dock is not None or instance.provider is not None:
        instance.unload()
    flush_deletes()


@pytest.fixture
def sample_layer():
    from tests.conftest import SAMPLE_SCENE

    layer = QgsRasterLayer(str(SAMPLE_SCENE), "sentinel2_coast")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer
