"""Job outputs -> styled layers in one group, each carrying its provenance in its metadata.

A job whose result has a ``layers`` list gets its files added here; every entry is
``{"path", "kind": "raster"|"vector", "name", "qml" (optional), "visible" (optional)}``, and the
result's ``provenance`` (model, checkpoint sha256, parameters, versions) goes into each layer's
metadata: its abstract (as JSON), keywords and history.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsLayerMetadata,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

PROVENANCE_PROPERTY = "terrafuse/provenance"


class LayerError(Exception):
    """An output file QGIS cannot open."""


def group_title(task: str, model: str, when: Optional[float] = None) -> str:
    """The group's name: task, model and time, so that runs stand apart in the layer tree."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    return f"{task} — {model} — {stamp}"


def provenance_metadata(layer: QgsMapLayer, provenance: Dict[str, Any]) -> QgsLayerMetadata:
    metadata = layer.metadata()
    metadata.setTitle(layer.name())
    metadata.setAbstract(json.dumps(provenance, indent=2, sort_keys=True, default=str))
    keywords = [f"{key}={provenance[key]}" for key in ("model", "backbone", "checkpoint_sha256") if key in provenance]
    metadata.setKeywords({"terrafuse": keywords})
    metadata.setHistory([*metadata.history(), f"Created by Terrafuse {provenance.get('terrafuse', '')}".strip()])
    return metadata


def open_layer(entry: Dict[str, Any]) -> QgsMapLayer:
    path, name = entry["path"], entry.get("name") or os.path.basename(entry["path"])
    if entry["kind"] == "raster":
        layer: QgsMapLayer = QgsRasterLayer(path, name)
    else:
        layer = QgsVectorLayer(path, name, "ogr")
    if not layer.isValid():
        raise LayerError(f"QGIS cannot open the output '{path}'")
    qml = entry.get("qml")
    if qml and os.path.exists(qml):
        message, ok = layer.loadNamedStyle(qml)
        if not ok:
            raise LayerError(f"Cannot apply the style '{qml}': {message}")
    return layer


def add_result_layers(result: Dict[str, Any], task: str, project: Optional[QgsProject] = None) -> QgsLayerTreeGroup:
    """Add every output of ``result`` into a new group at the top of the layer tree."""
    project = project or QgsProject.instance()
    provenance = result.get("provenance", {})
    model = provenance.get("model") or provenance.get("backbone") or "model"
    layers: List[QgsMapLayer] = [open_layer(entry) for entry in result["layers"]]
    group = project.layerTreeRoot().insertGroup(0, group_title(task, os.path.basename(str(model))))
    for entry, layer in zip(result["layers"], layers):
        layer.setMetadata(provenance_metadata(layer, provenance))
        layer.setCustomProperty(PROVENANCE_PROPERTY, json.dumps(provenance, default=str))
        project.addMapLayer(layer, False)
        node = group.addLayer(layer)
        node.setItemVisibilityChecked(entry.get("visible", True))
    return group
