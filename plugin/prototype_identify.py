"""Identify on a geo-prototype map (flow 4): a click lists the similarity of that cell to every prototype of its
region and, where the model has a head, the class each prototype is nearest to.

Nothing is recomputed and torch is never needed: the ``prototypes`` job writes next to the map
``prototype_similarities.tif`` (the similarity to every prototype, scaled to int16, then the region) and
``prototypes.json`` (palette, regions, per-prototype nearest class); a click reads one cell of the former
through GDAL's provider and joins it with the latter.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsCoordinateTransform,
    QgsMapLayer,
    QgsPointXY,
    QgsProject,
    QgsRaster,
    QgsRasterLayer,
)
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapToolEmitPoint
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QDialog, QTextBrowser, QVBoxLayout, QWidget

DOCUMENT_NAME = "prototypes.json"
DOCUMENT_FORMAT = "terrafuse-prototype-map"


class PrototypeMapError(Exception):
    """The layer is not a prototype map Terrafuse wrote, or its side files are missing."""


class PrototypeMap:
    """A prototype map's side files: the JSON document and the per-prototype similarity raster."""

    def __init__(self, folder: str) -> None:
        path = os.path.join(folder, DOCUMENT_NAME)
        try:
            with open(path, encoding="utf-8") as stream:
                self.document: Dict[str, Any] = json.load(stream)
        except (OSError, ValueError) as exc:
            raise PrototypeMapError(f"No prototype map document next to the layer ({path}): {exc}") from None
        if self.document.get("format") != DOCUMENT_FORMAT:
            raise PrototypeMapError(f"{path} is not a Terrafuse prototype map document")
        self.folder = folder
        self.similarities = self.document.get("similarities")
        self._raster: Optional[QgsRasterLayer] = None

    @classmethod
    def of_layer(cls, layer: Optional[QgsMapLayer]) -> PrototypeMap:
        if not isinstance(layer, QgsRasterLayer) or not os.path.isfile(layer.source()):
            raise PrototypeMapError("Choose a prototype map layer (the 'SkySense prototypes' layer of a run)")
        return cls(os.path.dirname(layer.source()))

    @property
    def raster(self) -> QgsRasterLayer:
        if self.similarities is None:
            raise PrototypeMapError("This prototype map was made without the similarities to every prototype; "
                                    "run the prototypes task again with 'Similarities' on")
        if self._raster is None:
            path = os.path.join(self.folder, self.similarities["file"])
            self._raster = QgsRasterLayer(path, "similarities", "gdal")
            if not self._raster.isValid():
                raise PrototypeMapError(f"Cannot open {path}")
        return self._raster

    def region_entry(self, region: int) -> Dict[str, Any]:
        return next((r for r in self.document.get("regions", []) if int(r["region"]) == region), {})

    def identify(self, point: QgsPointXY, crs: Any) -> Optional[Dict[str, Any]]:
        """The cell under ``point`` (in ``crs``): its region and every prototype's similarity, best first,
        with colour, pixel count and nearest class; None outside the map or on nodata."""
        raster = self.raster
        if crs is not None and crs.isValid() and crs != raster.crs():
            point = QgsCoordinateTransform(crs, raster.crs(), QgsProject.instance()).transform(point)
        if not raster.extent().contains(point):
            return None
        values = raster.dataProvider().identify(point, QgsRaster.IdentifyFormat.IdentifyFormatValue).results()
        region_band = int(self.similarities["region_band"])
        nodata, scale = self.similarities["nodata"], float(self.similarities["scale"])
        region_value = values.get(region_band)
        if region_value is None or int(region_value) == int(nodata):
            return None
        region = int(region_value)
        entry = self.region_entry(region)
        prototypes = {int(p["index"]): p for p in entry.get("prototypes", [])}
        palette = self.document.get("palette", [])
        rows: List[Dict[str, Any]] = []
        for band in range(1, region_band):
            value = values.get(band)
            if value is None or int(value) == int(nodata):
                continue
            index = band - 1
            info = prototypes.get(index, {})
            rows.append({"index": index, "similarity": float(value) / scale,
                         "colour": info.get("colour") or (palette[index] if index < len(palette) else "#888888"),
                         "pixels": info.get("pixels"), "nearest_class": info.get("nearest_class")})
        rows.sort(key=lambda r: -r["similarity"])
        return {"region": region, "bounds_deg": entry.get("bounds_deg"), "prototypes": rows,
                "has_head": any(r["nearest_class"] for r in rows), "point": (point.x(), point.y())}


def identify_html(info: Optional[Dict[str, Any]]) -> str:
    """The panel's text: the region, the assigned prototype, then every prototype's similarity as a bar."""
    if info is None:
        return "<p>No prototype map value here (outside the map or no data).</p>"
    rows = info["prototypes"]
    bounds = info.get("bounds_deg")
    where = ""
    if bounds:
        west, south, east, north = bounds
        where = f" — {west:g}° to {east:g}° E, {south:g}° to {north:g}° N"
    best = rows[0] if rows else None
    parts = [f"<h3>Prototype map: region {info['region']}{html.escape(where)}</h3>"]
    if best is not None:
        nearest = best.get("nearest_class")
        of_class = f", nearest class <b>{html.escape(str(nearest['name']))}</b>" if nearest else ""
        parts.append(f"<p>This cell: <b>prototype {best['index']}</b> (similarity {best['similarity']:.3f}){of_class}"
                     "</p>")
    header = ["", "Prototype", "Similarity", ""]
    header += (["Nearest class", "Probability"] if info.get("has_head") else []) + ["Cells"]
    lines = ["<tr>" + "".join(f"<th align='left' nowrap>{h}</th>" for h in header) + "</tr>"]
    for row in rows:
        width = max(1, int(round(60 * max(0.0, row["similarity"]))))
        swatch = f"<span style='background-color:{html.escape(row['colour'])}'>&nbsp;&nbsp;&nbsp;&nbsp;</span>"
        bar = (f"<table cellspacing='0' cellpadding='0'><tr><td width='{width}' bgcolor='#5b7db1'>&nbsp;</td>"
               "</tr></table>")
        cells = [swatch, f"{row['index']}", f"{row['similarity']:.3f}", bar]
        if info.get("has_head"):
            nearest = row.get("nearest_class") or {}
            cells += [html.escape(str(nearest.get("name", "–"))),
                      f"{100 * nearest['probability']:.0f} %" if "probability" in nearest else "–"]
        cells.append(f"{row['pixels']:,}" if isinstance(row.get("pixels"), int) else "–")
        lines.append("<tr>" + "".join(f"<td nowrap>{c}</td>" for c in cells) + "</tr>")
    parts.append(f"<table cellspacing='2' cellpadding='1'>{''.join(lines)}</table>")
    if not info.get("has_head"):
        parts.append("<p style='color:#666'>No class per prototype: the model has no trained head (train one with "
                     "'Train a SkySense head from labels').</p>")
    return "".join(parts)


class PrototypeIdentifyTool(QgsMapToolEmitPoint):
    """A click on the map: ``identified(info)`` with :meth:`PrototypeMap.identify`'s dict (or None), or
    ``failed(message)``. The layer comes from ``layer_getter`` at each click (the dock's chosen layer)."""

    identified = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, canvas: QgsMapCanvas, layer_getter) -> None:
        super().__init__(canvas)
        self.layer_getter = layer_getter
        self._maps: Dict[str, PrototypeMap] = {}

    def prototype_map(self, layer: Optional[QgsMapLayer]) -> PrototypeMap:
        key = layer.source() if layer is not None else ""
        if key not in self._maps:
            self._maps[key] = PrototypeMap.of_layer(layer)
        return self._maps[key]

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:
        point = self.toMapCoordinates(event.pos())
        try:
            prototype_map = self.prototype_map(self.layer_getter())
            info = prototype_map.identify(point, self.canvas().mapSettings().destinationCrs())
        except PrototypeMapError as exc:
            self.failed.emit(str(exc))
            return
        self.identified.emit(info)


class PrototypeIdentifyPanel(QDialog):
    """A small window beside the map that shows the last click (kept open between clicks, like QGIS's
    Identify Results)."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent, Qt.WindowType.Tool)
        self.setObjectName("TerrafusePrototypeIdentify")
        self.setWindowTitle("Terrafuse — prototype at the click")
        self.browser = QTextBrowser(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.browser)
        self.resize(460, 520)

    def show_info(self, info: Optional[Dict[str, Any]]) -> None:
        self.browser.setHtml(identify_html(info))
        self.show()
        self.raise_()
