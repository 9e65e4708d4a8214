"""A job's options as widgets, generated from its parameter schema (the job is defined once, in the backend).

The dock supplies the parameters it knows from its own widgets (the raster, the area, the labels);
every other parameter gets a widget here: folders and files get pickers, choices a combo box,
numbers spin boxes, flags a check box. An empty optional field means the job's default.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from ..backend.jobs import JobSpec, Param


def _file_widget(param: Param) -> QgsFileWidget:
    widget = QgsFileWidget()
    if param.kind in ("folder", "output_folder"):
        widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
    elif param.kind == "output_file":
        widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
    if param.kind.startswith("output") and not param.required:
        widget.lineEdit().setPlaceholderText("a new folder in your profile")
    return widget


def make_widget(param: Param) -> QWidget:
    if param.kind in ("file", "folder", "output_folder", "output_file", "raster", "vector"):
        return _file_widget(param)
    if param.kind == "choice":
        combo = QComboBox()
        combo.addItems(list(param.choices))
        if not param.required and param.default in param.choices:
            combo.setCurrentText(param.default)
        return combo
    if param.kind == "bool":
        check = QCheckBox()
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


class JobOptionsForm(QWidget):
    """The widgets of ``spec``'s parameters, less those named in ``supplied``."""

    def __init__(self, spec: JobSpec, supplied: Iterable[str], parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.widgets: Dict[str, QWidget] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        skip = set(supplied)
        for param in spec.params:
            if param.name in skip:
                continue
            widget = make_widget(param)
            widget.setToolTip(param.help)
            widget.setObjectName(f"option_{param.name}")
            layout.addRow(param.name.replace("_", " ").capitalize(), widget)
            self.widgets[param.name] = widget

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
