"""A job's options as widgets, generated from its parameter schema (the job is defined once, in the backend).

The dock supplies the parameters it knows from its own widgets (the raster, the area, the labels);
every other parameter gets a widget here under the schema's short label, with its help sentence as the
tooltip: folders and files get pickers, choices a combo box, numbers spin boxes, flags a check box. The
essential parameters and the outputs come first; the advanced ones sit in a collapsed "Advanced" section.
An empty optional field means the job's default; an empty output folder, a new folder in the profile
(shown as the field's placeholder).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional

from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..backend.jobs import JobSpec, Param

#: What an empty output field means, when the caller names no folder.
NEW_FOLDER_HINT = "a new folder in your profile"


def _file_widget(param: Param, output_hint: str) -> QgsFileWidget:
    widget = QgsFileWidget()
    if param.kind in ("folder", "output_folder"):
        widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
    elif param.kind == "output_file":
        widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
    if param.kind.startswith("output"):
        widget.lineEdit().setPlaceholderText(output_hint if param.required else optional_hint(param))
    widget.setMinimumWidth(80)  # the line edit shrinks, the "…" button stays: never wider than the dock
    return widget


def optional_hint(param: Param) -> str:
    """What an empty optional field means: the default its help names ("(default: <out>/preview)"), else none."""
    match = re.search(r"\(default: ([^)]*)\)", param.help)
    return f"default: {match.group(1)}" if match else "optional"


def tooltip(param: Param) -> str:
    """The parameter's help sentence, with its default."""
    text = param.help
    if not param.required and param.default not in (None, ""):
        text += f" (default: {param.default})"
    return text


def make_widget(param: Param, output_hint: str = NEW_FOLDER_HINT) -> QWidget:
    if param.kind in ("file", "folder", "output_folder", "output_file", "raster", "vector"):
        return _file_widget(param, output_hint)
    if param.kind == "choice":
        combo = QComboBox()
        combo.addItems(list(param.choices))
        if not param.required and param.default in param.choices:
            combo.setCurrentText(param.default)
        return combo
    if param.kind == "bool":
        check = QCheckBox(param.label)
        check.setChecked(bool(param.default) if not param.required else False)
        return check
    if param.kind in ("int", "float"):
        if param.kind == "int":
            box: QSpinBox | QDoubleSpinBox = QSpinBox()
            box.setRange(0, 10**9)
        else:
            box = QDoubleSpinBox()
            box.setRange(0.0, 1e9)
            box.setDecimals(4)
        if param.required or param.default is None:
            box.setSpecialValueText("default")  # the minimum shows as "default" and sends nothing
            box.setValue(box.minimum())
        else:
            box.setValue(param.default)
        return box
    line = QLineEdit()
    if not param.required and param.default is not None:
        line.setText(str(param.default))
    return line


def _form(parent: QWidget) -> QFormLayout:
    layout = QFormLayout(parent)
    layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a narrow dock puts fields under labels
    return layout


class JobOptionsForm(QWidget):
    """The widgets of ``spec``'s parameters, less those named in ``supplied``: essentials and outputs first,
    the advanced ones in :attr:`advanced` (collapsed). ``output_hint`` is the placeholder of a required output
    folder (the folder the dock makes when it is left empty)."""

    def __init__(self, spec: JobSpec, supplied: Iterable[str], parent: Optional[QWidget] = None,
                 output_hint: str = NEW_FOLDER_HINT) -> None:
        super().__init__(parent)
        self.spec = spec
        self.widgets: Dict[str, QWidget] = {}
        self.labels: Dict[str, str] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        main = QWidget(self)
        main_form = _form(main)
        main_form.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(main)
        self.advanced = QgsCollapsibleGroupBox("Advanced", self)
        self.advanced.setObjectName("advancedOptions")
        self.advanced.setSaveCollapsedState(False)  # collapsed on every task: the short form first
        advanced_form = _form(self.advanced)
        skip = set(supplied)
        shown = [p for p in spec.params if p.name not in skip]
        order = {"essential": 0, "output": 1, "advanced": 2}
        for param in sorted(shown, key=lambda p: order[p.group]):  # stable: the schema's order within a group
            widget = make_widget(param, output_hint)
            widget.setToolTip(tooltip(param))
            widget.setObjectName(f"option_{param.name}")
            widget.setSizePolicy(QSizePolicy.Policy.Expanding, widget.sizePolicy().verticalPolicy())
            form = advanced_form if param.group == "advanced" else main_form
            if isinstance(widget, QCheckBox):
                form.addRow(widget)  # the box carries its label: no column spent on it
            else:
                form.addRow(param.label, widget)
                form.labelForField(widget).setToolTip(tooltip(param))
            self.widgets[param.name] = widget
            self.labels[param.name] = param.label
        n_advanced = sum(p.group == "advanced" for p in shown)
        self.advanced.setTitle(f"Advanced ({n_advanced})")
        self.advanced.setVisible(n_advanced > 0)
        self.advanced.setCollapsed(True)
        main.setVisible(main_form.rowCount() > 0)
        outer.addWidget(self.advanced)

    def set_value(self, name: str, value: Any) -> None:
        widget = self.widgets[name]
        if isinstance(widget, QgsFileWidget):
            widget.setFilePath(str(value))
        elif isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            widget.setValue(value)
        else:
            widget.setText(str(value))

    def values(self) -> Dict[str, Any]:
        """The parameters the user set; fields left empty (or at "default") are left out."""
        values: Dict[str, Any] = {}
        for name, widget in self.widgets.items():
            if isinstance(widget, QgsFileWidget):
                value: Any = widget.filePath().strip()
            elif isinstance(widget, QComboBox):
                value = widget.currentText()
            elif isinstance(widget, QCheckBox):
                value = widget.isChecked()
            elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
                value = None if widget.specialValueText() and widget.value() == widget.minimum() else widget.value()
            else:
                value = widget.text().strip()
            if value not in ("", None):
                values[name] = value
        return values
