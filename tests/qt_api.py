"""Qt6 / QGIS 4 readiness of the code that runs inside QGIS, read with ast (no QGIS needed).

The patterns are those of QGIS's own migration script (qgis/QGIS scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py):
unscoped enums (`Qt.RightDockWidgetArea` must read `Qt.DockWidgetArea.RightDockWidgetArea`), `QVariant.Int`
style types and `QVariant()` nulls, `exec_`, `qApp`, `QRegExp`, `QDesktopWidget`, compiled resources,
`activated[str]`, `QFontMetrics.width`, renamed enums (`Qt.MidButton`), PyQt5 imports, and the classes that moved
from QtWidgets to QtGui (QAction, ...). Every finding names its file and line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What runs inside QGIS: the plugin, its entry point, the headless interface and demo that drive it, the tests.
# scripts/check_qgis_env.py is left out on purpose: it checks that the Qt5 test environment is QGIS's own.
SCANNED = ("__init__.py", "plugin", "scripts/qgis_headless.py", "scripts/demo.py", "tests/plugin")

QT_CLASS = re.compile(r"^(Q[A-Z]\w*|Qgs\w+|Qgis|Qt)$")
# Qt.GlobalColor members are the only lower-case enum values the plugin might reach.
LOWER_CASE_ENUMS = {"Qt": {"white", "black", "red", "darkRed", "green", "darkGreen", "blue", "darkBlue", "cyan",
                           "darkCyan", "magenta", "darkMagenta", "yellow", "darkYellow", "gray", "darkGray",
                           "lightGray", "transparent", "color0", "color1"}}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoGroup", "QUndoStack",
                  "QFileSystemModel"}
REMOVED_NAMES = {"qApp": "QApplication.instance()", "QRegExp": "QRegularExpression",
                 "QRegExpValidator": "QRegularExpressionValidator", "QDesktopWidget": "QScreen",
                 "resources_rc": "icons loaded by file path", "QGLWidget": "QOpenGLWidget"}
RENAMED_ENUMS = {("Qt", "MidButton"), ("Qt", "TextColorRole"), ("Qt", "BackgroundColorRole"),
                 ("QPainter", "HighQualityAntialiasing")}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def scanned_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = root / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _annotation_nodes(tree: ast.AST) -> set[ast.AST]:
    """Every node inside a type annotation: there an enum's type (`Qt.DockWidgetArea`) is meant, not a value."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {inner for root in roots for inner in ast.walk(root)}


def unscoped_enums(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """`Class.Member` where Member is an enum value reached without its enum's name (a Qt/QGIS class on the left).

    The enum's type itself (`Qt.DockWidgetArea` in `Qt.DockWidgetArea.RightDockWidgetArea` or in an annotation),
    `getattr(QMetaType.Type, name)`, a nested class that is called (`QgsVectorFileWriter.SaveVectorOptions()`)
    and ALL_CAPS constants
    (`Qgis.QGIS_VERSION`) are not enum values.
    """
    parents = _parents(tree)
    annotations = _annotation_nodes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node in annotations:
            continue
        owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
        if owner is None or owner == "QVariant" or not QT_CLASS.match(owner):
            continue  # QVariant's types are reported by qt5_only
        member = node.attr
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue  # the enum's type, followed by its member
        if isinstance(parent, ast.Call) and parent.func is node:
            continue  # a nested class or a static method
        if isinstance(parent, ast.Call) and getattr(parent.func, "id", None) in ("getattr", "isinstance"):
            continue  # the enum's type, asked for a member or a value's type
        lower_case_enum = member in LOWER_CASE_ENUMS.get(owner, ())
        if lower_case_enum or (member[0].isupper() and not member.isupper() and not member.startswith("Q")):
            yield node.lineno, f"{owner}.{member}"


def _qt5_fallbacks(tree: ast.AST) -> set[ast.AST]:
    """Imports in the `except ImportError:` branch of a `try:` that imports the Qt6 name first."""
    fallbacks: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(inner, ast.ImportFrom) for inner in node.body):
            for handler in node.handlers:
                if isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError"):
                    fallbacks.update(inner for inner in handler.body if isinstance(inner, ast.ImportFrom))
    return fallbacks


def qt5_only(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Uses of API that PyQt6 / QGIS 4 no longer has, with the form that works on both."""
    fallbacks = _qt5_fallbacks(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
                yield node.lineno, f"from {node.module} import ...: import through qgis.PyQt"
            for alias in node.names:
                if node.module.endswith("QtWidgets") and alias.name in MOVED_TO_QTGUI and node not in fallbacks:
                    yield node.lineno, f"{alias.name} from QtWidgets: it lives in QtGui under Qt6 (plugin/qt_compat.py)"
                if alias.name in REMOVED_NAMES:
                    yield node.lineno, f"{alias.name} is gone in Qt6: use {REMOVED_NAMES[alias.name]}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
                    yield node.lineno, f"import {alias.name}: import through qgis.PyQt"
        elif isinstance(node, ast.Attribute):
            name = dotted(node)
            if (getattr(node.value, "id", None) or getattr(node.value, "attr", None)) == "QVariant":
                yield node.lineno, f"{name}: QVariant types are gone in Qt6 (QMetaType.Type; plugin/qt_compat.py)"
            if node.attr == "exec_":
                yield node.lineno, "exec_(): use exec()"
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in RENAMED_ENUMS:
                yield node.lineno, f"{name} was removed in Qt6"
            if isinstance(node.value, ast.Name) and node.value.id in REMOVED_NAMES:
                yield node.lineno, f"{name}: {node.value.id} is gone in Qt6"
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "QVariant" and not node.args:
                yield node.lineno, "QVariant(): use qgis.core.NULL"
            if isinstance(func, ast.Attribute) and func.attr == "width" and isinstance(func.value, ast.Call):
                inner = func.value.func
                if (isinstance(inner, ast.Attribute) and inner.attr == "fontMetrics") or (
                        isinstance(inner, ast.Name) and inner.id in ("QFontMetrics", "QFontMetricsF")):
                    yield node.lineno, "QFontMetrics.width() is gone in Qt6: use horizontalAdvance()"
            if isinstance(func, ast.Attribute) and func.attr == "addAction" and len(node.args) >= 4:
                yield node.lineno, "addAction(text, receiver, slot, shortcut) is ambiguous in Qt6: make the QAction"
            if isinstance(func, ast.Attribute) and func.attr in ("desktop", "setMargin") and (
                    func.attr == "setMargin" or not node.args):
                yield node.lineno, f"{func.attr}() is gone in Qt6"
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "activated" and isinstance(node.slice, ast.Name) and node.slice.id == "str":
                yield node.lineno, "activated[str] is gone in Qt6: use textActivated"
        elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
            yield node.lineno, "def exec_: name it exec"
        elif isinstance(node, ast.Name) and node.id in REMOVED_NAMES and isinstance(node.ctx, ast.Load):
            yield node.lineno, f"{node.id} is gone in Qt6: use {REMOVED_NAMES[node.id]}"


def findings(paths: list[Path] | None = None, root: Path = ROOT) -> list[Finding]:
    found: list[Finding] = []
    for path in paths if paths is not None else scanned_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        found.extend(Finding(where, line, f"unscoped enum {name}") for line, name in unscoped_enums(tree))
        found.extend(Finding(where, line, message) for line, message in qt5_only(tree))
    return sorted(set(found), key=lambda f: (f.path, f.line, f.message))


def scoped_chains(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every outermost `Class.Enum.Member` chain on a Qt/QGIS class (for the real-QGIS check that they resolve)."""
    parents = _parents(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue
        name = dotted(node)
        if name and QT_CLASS.match(name.split(".")[0]):
            yield node.lineno, name
