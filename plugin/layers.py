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
    """The group's name: task, model and time (to the second), short, so that runs stand apart in the
    Layers panel: ``Land cover · head · 14:02:31``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when))
    return f"{task} · {model} · {stamp}"


def _insert_index(root: QgsLayerTreeGroup, below: Optional[QgsMapLayer]) -> int:
    """Index in the tree's root right under ``below``'s top-level node (the top when it is not in the tree)."""
    node = root.findLayer(below.id()) if below is not None else None
    while node is not None and node.parent() is not None and node.parent() is not root:
        node = node.parent()
    if node is None or node.parent() is not root:
        return 0
    return root.children().index(node) + 1


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


def add_result_layers(result: Dict[str, Any], task: str, project: Optional[QgsProject] = None,
                      below: Optional[QgsMapLayer] = None, when: Optional[float] = None,
                      opacity: Optional[float] = None) -> QgsLayerTreeGroup:
    """Add every output of ``result`` into a new group at the top of the layer tree, or right under the layer
    ``below`` (the labels stay on top of what they produced); ``opacity`` for its rasters (a preview)."""
    project = project or QgsProject.instance()
    provenance = result.get("provenance", {})
    model = provenance.get("model") or provenance.get("backbone") or "model"
    layers: List[QgsMapLayer] = [open_layer(entry) for entry in result["layers"]]
    root = project.layerTreeRoot()
    title = group_title(task, os.path.basename(str(model).rstrip("/\\")), when)
    group = root.insertGroup(_insert_index(root, below), title)
    for entry, layer in zip(result["layers"], layers):
        layer.setMetadata(provenance_metadata(layer, provenance))
        layer.setCustomProperty(PROVENANCE_PROPERTY, json.dumps(provenance, default=str))
        if opacity is not None and isinstance(layer, QgsRasterLayer) and layer.renderer() is not None:
            layer.renderer().setOpacity(opacity)
        project.addMapLayer(layer, False)
        node = group.addLayer(layer)
        node.setItemVisibilityChecked(entry.get("visible", True))
    return group
