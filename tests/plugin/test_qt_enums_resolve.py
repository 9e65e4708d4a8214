"""In real QGIS: every scoped enum the plugin names exists, and no enum value is reached without its enum."""

from __future__ import annotations

import ast
import enum
import importlib
from typing import Any

import pytest
from qgis import core, gui
from qgis.PyQt import QtCore, QtGui, QtWidgets

from tests.conftest import PACKAGE_NAME, ROOT
from tests.qt_api import scanned_files, scoped_chains

NAMESPACE: dict[str, Any] = {}
for module in (QtCore, QtGui, QtWidgets, core, gui):
    NAMESPACE.update({name: getattr(module, name) for name in dir(module) if name.startswith("Q")})


def is_enum_type(obj: Any) -> bool:
    """A sip enum (PyQt5) or a Python enum (PyQt6, and QGIS's scoped enums)."""
    return type(obj).__name__ == "enumtype" or (isinstance(obj, type) and issubclass(obj, enum.Enum))


def is_enum_value(obj: Any) -> bool:
    return is_enum_type(type(obj))


def resolve(chain: str) -> tuple[Any, Any]:
    """(owner, value) of `Root.a.b`; AttributeError when a name does not exist."""
    parts = chain.split(".")
    owner, value = None, NAMESPACE[parts[0]]
    for part in parts[1:]:
        owner, value = value, getattr(value, part)
    return owner, value


def chains() -> list[tuple[str, int, str]]:
    found = []
    for path in scanned_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found.extend((str(path.relative_to(ROOT)), line, chain) for line, chain in scoped_chains(tree)
                     if chain.split(".")[0] in NAMESPACE and "." in chain)
    return found


def test_every_qt_name_exists_and_every_enum_value_is_scoped() -> None:
    missing, unscoped = [], []
    for where, line, chain in chains():
        try:
            owner, value = resolve(chain)
        except AttributeError as error:
            missing.append(f"{where}:{line}: {chain} ({error})")
            continue
        if is_enum_value(value) and not is_enum_type(owner):
            unscoped.append(f"{where}:{line}: {chain}")
    assert len(chains()) > 100
    assert not missing, "\n".join(missing)
    assert not unscoped, "\n".join(unscoped)


@pytest.mark.parametrize(("chain", "scoped"), [("Qt.DockWidgetArea.RightDockWidgetArea", True),
                                              ("QgsTask.Flag.CanCancel", True), ("QgsTask.CanCancel", False),
                                              ("Qgis.Critical", False)])
def test_the_check_tells_scoped_from_unscoped(chain: str, scoped: bool) -> None:
    try:
        owner, value = resolve(chain)
    except AttributeError:
        pytest.skip(f"{chain} does not exist in this QGIS")  # PyQt6 has no unscoped enums at all
    assert is_enum_value(value)
    assert is_enum_type(owner) is scoped


def test_label_fields_have_the_types_this_qgis_takes() -> None:
    """QVariant.Int on QGIS 3.22, QMetaType.Type.Int from 3.38 on: both are Qt's type id 2 (QString: 10)."""
    labels = importlib.import_module(f"{PACKAGE_NAME}.plugin.labels")
    fields = labels._fields()
    assert [fields.field(i).name() for i in range(fields.count())] == ["class_id", "class_name", "colour"]
    assert [int(fields.field(i).type()) for i in range(fields.count())] == [
        int(QtCore.QMetaType.Type.Int), int(QtCore.QMetaType.Type.QString), int(QtCore.QMetaType.Type.QString)]
