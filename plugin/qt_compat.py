"""The few names that differ between Qt5 / QGIS 3 and Qt6 / QGIS 4, in one place.

QAction moved from QtWidgets to QtGui in Qt6. QgsField takes a QVariant type up to QGIS 3.36 and a
QMetaType.Type from QGIS 3.38 on; PyQt6 has no QVariant types at all.
"""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis
from qgis.PyQt.QtCore import QMetaType, QVariant

try:
    from qgis.PyQt.QtGui import QAction  # Qt6
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5

__all__ = ["QAction", "field_type"]

#: QGIS's first version whose QgsField takes a QMetaType.Type.
_METATYPE_FIELDS = 33800
#: QMetaType.Type names whose QVariant counterpart has another name.
_QVARIANT_NAMES = {"QString": "String", "QDate": "Date", "QDateTime": "DateTime"}


def field_type(name: str) -> Any:
    """The type to give QgsField for the QMetaType.Type `name` ("Int", "Double", "QString", ...)."""
    if Qgis.versionInt() >= _METATYPE_FIELDS:
        return getattr(QMetaType.Type, name)
    return getattr(QVariant, _QVARIANT_NAMES.get(name, name))
