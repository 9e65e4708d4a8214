"""The dock's Ray placement row, under the cluster address: actors, threads per actor and batches in
flight (auto: fitted to the cluster's nodes), kept in the settings and sent with the address."""

from __future__ import annotations

from typing import Dict, Iterable

from qgis.PyQt.QtWidgets import QHBoxLayout, QSpinBox, QWidget

from .settings import PluginSettings

#: (job parameter, suffix, tooltip); the backend's placement reads the same names (backend/jobs/__init__.py).
PLACEMENT_FIELDS = (
    ("actors", " actors", "Ray actors (copies of the model) to start; auto: as many as the cluster's nodes hold"),
    ("threads", " threads", "CPUs (torch threads) of each CPU actor; auto: up to 4, fitted to the nodes"),
    ("in_flight", " in flight", "Batches sent ahead to each actor; auto: 2"),
)


class ClusterPlacementRow(QWidget):
    """Three spin boxes, 0 shown as "auto"; each change is saved at once."""

    def __init__(self, settings: PluginSettings, parent: QWidget = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.boxes: Dict[str, QSpinBox] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for key, suffix, tip in PLACEMENT_FIELDS:
            box = QSpinBox(self)
            box.setObjectName(f"cluster_{key}")
            box.setRange(0, 4096)
            box.setSpecialValueText(f"auto{suffix}")
            box.setSuffix(suffix)
            box.setToolTip(tip)
            box.setValue(settings.cluster_option(key))
            box.valueChanged.connect(lambda value, key=key: self.settings.set_cluster_option(key, value))
            layout.addWidget(box)
            self.boxes[key] = box

    def values(self, names: Iterable[str]) -> Dict[str, int]:
        """The options set (not auto) that the job has among ``names``."""
        wanted = set(names)
        return {key: box.value() for key, box in self.boxes.items() if key in wanted and box.value() > 0}
