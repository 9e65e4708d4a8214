"""The code that runs in QGIS loads under Qt6 / QGIS 4 as under Qt5 / QGIS 3.22 (read with ast, no QGIS)."""

from __future__ import annotations

import ast
import configparser
import textwrap

import pytest

from tests.conftest import ROOT
from tests.qt_api import findings, qt5_only, scanned_files, unscoped_enums

# Each line is something PyQt6 / QGIS 4 refuses; the scanner must report every one of them.
QT5_ONLY = {
    "dock area": "iface.addDockWidget(Qt.RightDockWidgetArea, dock)",
    "qgis enum": "band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)",
    "task flag": "super().__init__('x', QgsTask.CanCancel)",
    "message box": "ok = answer == QMessageBox.Yes",
    "flags": "painter.drawText(rect, Qt.AlignLeft | Qt.AlignVCenter, title)",
    "key": "done = event.key() == Qt.Key_Return",
    "global colour": "canvas.setCanvasColor(Qt.white)",
    "nested owner": "x = qgis.core.Qgis.Critical",
    "qvariant type": "field = QgsField('a', QVariant.Int)",
    "qvariant null": "value = QVariant()",
    "qaction": "from qgis.PyQt.QtWidgets import QAction",
    "pyqt5 import": "from PyQt5.QtCore import Qt",
    "exec_": "dialog.exec_()",
    "qapp": "from qgis.PyQt.QtWidgets import qApp",
    "regexp": "from qgis.PyQt.QtCore import QRegExp",
    "renamed enum": "button = Qt.MidButton",
    "font width": "w = widget.fontMetrics().width('x')",
    "activated[str]": "combo.activated[str].connect(f)",
    "setMargin": "layout.setMargin(4)",
}

# What is fine under both: scoped enums, the enum's type in an annotation or getattr, nested classes, constants.
BOTH = """
from qgis.PyQt.QtCore import Qt
try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction
iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
painter.drawText(rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, title)
canvas.setCanvasColor(Qt.GlobalColor.white)
options = QgsVectorFileWriter.SaveVectorOptions()
version = Qgis.QGIS_VERSION
kind = getattr(QMetaType.Type, name)
project = QgsProject.instance()
dialog.exec()
def add(area: Qt.DockWidgetArea) -> QgsWkbTypes.GeometryType:
    pass
"""


def scan(source: str) -> list:
    tree = ast.parse(textwrap.dedent(source))
    return [*unscoped_enums(tree), *qt5_only(tree)]


@pytest.mark.parametrize("source", QT5_ONLY.values(), ids=QT5_ONLY.keys())
def test_scanner_reports_what_qt6_refuses(source: str) -> None:
    assert scan(source), f"not reported: {source}"


def test_scanner_accepts_what_both_accept() -> None:
    assert scan(BOTH) == []


def test_scanner_reads_the_plugin_and_its_qgis_scripts() -> None:
    names = {str(path.relative_to(ROOT)) for path in scanned_files()}
    assert {"__init__.py", "plugin/plugin.py", "plugin/dock/dock.py", "plugin/processing/algorithm.py",
            "scripts/qgis_headless.py", "tests/plugin/conftest.py"} <= names


def test_no_unscoped_enum_or_qt5_only_api() -> None:
    problems = findings()
    assert not problems, "Qt6 / QGIS 4 would refuse:\n" + "\n".join(map(str, problems))


def test_metadata_declares_qgis_4() -> None:
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "metadata.txt", encoding="utf-8")
    general = metadata["general"]
    assert general["supportsQt6"] == "True"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"
