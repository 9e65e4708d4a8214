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
from qgis.PyQt.QtCore import QPoint, Qt, pyqtSignal
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
        grid = self.document.get("region_grid") or []
        count = self.document.get("region_count") or (int(grid[0]) * int(grid[1]) if len(grid) == 2 else None)
        return {"region": region, "region_count": count, "bounds_deg": entry.get("bounds_deg"), "prototypes": rows,
                "has_head": any(r["nearest_class"] for r in rows), "point": (point.x(), point.y())}


def longitude_text(degrees: float) -> str:
    """``90°W``, ``45°E``, ``0°``."""
    return f"{abs(degrees):g}°" + ("" if degrees == 0 else ("W" if degrees < 0 else "E"))


def latitude_text(degrees: float) -> str:
    """``10°S``, ``45°N``, ``0°``."""
    return f"{abs(degrees):g}°" + ("" if degrees == 0 else ("S" if degrees < 0 else "N"))


def region_text(info: Dict[str, Any]) -> str:
    """``region 18 of 64, 90°W to 45°W, 0° to 45°N``."""
    count = info.get("region_count")
    text = f"region {info['region']}" + (f" of {count}" if count else "")
    bounds = info.get("bounds_deg")
    if bounds:
        west, south, east, north = bounds
        text += (f", {longitude_text(west)} to {longitude_text(east)}, "
                 f"{latitude_text(south)} to {latitude_text(north)}")
    return text


def identify_html(info: Optional[Dict[str, Any]], compact: bool = False) -> str:
    """The click's text: the region, the assigned prototype, then every prototype's similarity (as a bar in the
    window; ``compact``, for the dock's narrow pane: the five most similar, no bar)."""
    if info is None:
        return "<p>No prototype map value here (outside the map or no data).</p>"
    rows = info["prototypes"]
    best = rows[0] if rows else None
    parts = [f"<h3>Prototype at the click</h3><p>{html.escape(region_text(info))}</p>"]
    if best is not None:
        nearest = best.get("nearest_class")
        of_class = f", nearest class <b>{html.escape(str(nearest['name']))}</b>" if nearest else ""
        parts.append(f"<p>This cell: <b>prototype {best['index']}</b> (similarity {best['similarity']:.3f}){of_class}"
                     "</p>")
    has_head = info.get("has_head")
    header = ["", "#" if not compact else "Prototype", "Similarity"] + ([] if compact else [""])
    header += (["Nearest class" if compact else "Class"] + ([] if compact else ["Prob."]) if has_head else [])
    header += [] if compact else ["Cells"]
    lines = ["<tr>" + "".join(f"<th align='left' nowrap>{h}</th>" for h in header) + "</tr>"]
    for row in rows[:5] if compact else rows:
        swatch = f"<span style='background-color:{html.escape(row['colour'])}'>&nbsp;&nbsp;&nbsp;&nbsp;</span>"
        cells = [swatch, f"{row['index']}", f"{row['similarity']:.3f}"]
        if not compact:
            width = max(1, int(round(40 * max(0.0, row["similarity"]))))
            cells.append(f"<table cellspacing='0' cellpadding='0'><tr><td width='{width}' bgcolor='#5b7db1'>"
                         "&nbsp;</td></tr></table>")
        if has_head:
            nearest = row.get("nearest_class") or {}
            cells.append(html.escape(str(nearest.get("name", "–"))))
            if not compact:
                cells.append(f"{100 * nearest['probability']:.0f} %" if "probability" in nearest else "–")
        if not compact:
            cells.append(f"{row['pixels']:,}" if isinstance(row.get("pixels"), int) else "–")
        lines.append("<tr>" + "".join(f"<td nowrap>{c}</td>" for c in cells) + "</tr>")
    parts.append(f"<table cellspacing='2' cellpadding='1'>{''.join(lines)}</table>")
    if compact and len(rows) > 5:
        parts.append(f"<p>… and {len(rows) - 5} more in the identify window.</p>")
    if not has_head:
        parts.append("<p>No class per prototype: the model has no trained head (train one with "
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
        self.last_click: Optional[QPoint] = None  # in the canvas's pixels: the window keeps away from it

    def prototype_map(self, layer: Optional[QgsMapLayer]) -> PrototypeMap:
        key = layer.source() if layer is not None else ""
        if key not in self._maps:
            self._maps[key] = PrototypeMap.of_layer(layer)
        return self._maps[key]

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:
        point = self.toMapCoordinates(event.pos())
        self.last_click = QPoint(event.pos())
        try:
            prototype_map = self.prototype_map(self.layer_getter())
            info = prototype_map.identify(point, self.canvas().mapSettings().destinationCrs())
        except PrototypeMapError as exc:
            self.failed.emit(str(exc))
            return
        self.identified.emit(info)


class PrototypeIdentifyPanel(QDialog):
    """A window beside the map that shows the last click (kept open between clicks, like QGIS's Identify
    Results), placed at the side of the map away from the clicked spot."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent, Qt.WindowType.Tool)
        self.setObjectName("TerrafusePrototypeIdentify")
        self.setWindowTitle("Terrafuse — prototype at the click")
        self.browser = QTextBrowser(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.browser)
        self.resize(440, 480)

    def show_info(self, info: Optional[Dict[str, Any]], canvas: Optional[QgsMapCanvas] = None,
                  click: Optional[QPoint] = None) -> None:
        self.browser.setHtml(identify_html(info))
        if canvas is not None:
            self.place_beside(canvas, click)
        self.show()
        self.raise_()

    def place_beside(self, canvas: QgsMapCanvas, click: Optional[QPoint]) -> None:
        """Along the map's left or right edge, whichever is farther from the click (the right one first)."""
        viewport = canvas.viewport()
        width = min(self.width(), max(200, viewport.width() // 2 - 16))
        height = min(self.height(), max(200, viewport.height() - 16))
        self.resize(width, height)
        click_x = click.x() if click is not None else 0
        on_right = click_x < viewport.width() / 2
        x = viewport.width() - width - 8 if on_right else 8
        self.move(viewport.mapToGlobal(QPoint(x, 8)))
