"""The dock's result pane: one page per task, cleared when a job of that task starts, and the HTML of each
task's result (training metrics with their spread and the baseline, land cover, raster inspection, backend).

A page shows what the result holds: the training metrics may come in the cross-validated shape (``scheme``,
``folds``, ``held_out_labels``, ``*_std``, ``summary``, ``comparison``) or in the older one without them.
"""

from __future__ import annotations

import html
import os
from typing import Any, Dict, Optional

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QObject

#: Tasks whose page keeps the "zoom to where a new label helps most" button.
UNCERTAINTY_TASKS = ("train",)


class ResultsPane(QObject):
    """Behaviour of ``resultBrowser`` and ``zoomUncertainButton``: a page per task."""

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.browser = dock.resultBrowser
        self.zoom_button = dock.zoomUncertainButton
        self.pages: Dict[str, str] = {}
        self.task = ""
        self.most_uncertain: Optional[Dict[str, Any]] = None
        self.uncertainty_layer = None  # the preview's uncertainty layer, shown when zooming
        self.browser.setMinimumHeight(240)  # a training's scores without scrolling in the pane
        self.zoom_button.clicked.connect(self.zoom_to_most_uncertain)
        self.zoom_button.hide()

    def show_task(self, task: str) -> None:
        """Show ``task``'s page (empty until a job of it ends)."""
        self.task = task
        self.browser.setHtml(self.pages.get(task, ""))
        self.zoom_button.setVisible(task in UNCERTAINTY_TASKS and self.most_uncertain is not None)

    def set_page(self, task: str, text: str) -> None:
        self.pages[task] = text
        if task == self.task:
            self.browser.setHtml(text)

    def clear(self, task: str) -> None:
        """A job of ``task`` starts: its old result goes."""
        self.pages.pop(task, None)
        if task in UNCERTAINTY_TASKS:
            self.most_uncertain, self.uncertainty_layer = None, None
        if task == self.task:
            self.show_task(task)

    def set_most_uncertain(self, found: Optional[Dict[str, Any]], layer: Any = None) -> None:
        self.most_uncertain, self.uncertainty_layer = found, layer
        self.zoom_button.setVisible(self.task in UNCERTAINTY_TASKS and found is not None)

    def zoom_to_most_uncertain(self) -> None:
        """Zoom the map to the tile the head is least sure about, with the uncertainty layer shown."""
        if not self.most_uncertain:
            return
        canvas = self.dock.canvas
        west, south, east, north = self.most_uncertain["bounds_wgs84"]
        transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"),
                                           canvas.mapSettings().destinationCrs(), QgsProject.instance())
        extent = transform.transformBoundingBox(QgsRectangle(west, south, east, north))
        extent.scale(1.5)
        layer = self.uncertainty_layer
        if layer is not None and QgsProject.instance().mapLayer(layer.id()) is not None:
            node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
            if node is not None:
                node.setItemVisibilityCheckedParentRecursive(True)
        canvas.setExtent(extent)
        canvas.refresh()


# -- the pages ---------------------------------------------------------------------------------------------
def _score(value: Any, std: Any = None) -> str:
    """A 0-1 score with its spread: ``0.71 ± 0.08`` (``–`` when missing)."""
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" ± {std:.2f}" if isinstance(std, (int, float)) else "")


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _scores_line(metrics: Dict[str, Any]) -> str:
    return (f"Overall accuracy {_score(metrics.get('overall_accuracy'), metrics.get('overall_accuracy_std'))} · "
            f"mIoU {_score(metrics.get('miou'), metrics.get('miou_std'))} · macro F1 "
            f"{_score(metrics.get('macro_f1'), metrics.get('macro_f1_std'))}")


def _how_validated(metrics: Dict[str, Any]) -> str:
    """``Cross-validated over 4 folds, 23 held-out labels``: what the figures rest on."""
    scheme, folds, labels = metrics.get("scheme"), metrics.get("folds"), metrics.get("held_out_labels")
    parts = []
    if scheme == "cross-validation":
        parts.append(f"Cross-validated over {folds} folds" if folds else "Cross-validated")
    elif scheme == "single split":
        parts.append("One spatial hold-out")
    if labels is not None:
        parts.append(f"{labels} held-out label{'s' * (labels != 1)}")
    return ", ".join(parts)


def _short(name: str, width: int = 8) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _band_context_line(result: Dict[str, Any]) -> str:
    """What the head reads, and what the inner folds of the labels made of the model's features."""
    line = ("The head reads every band of the raster and its local context beside the model's features "
            "(\u201cBands beside features\u201d, on by default).")
    epochs = (result.get("validation") or {}).get("final_epochs")
    if epochs == 0:
        return line + (" On inner folds of your labels the features added nothing to the bands, so the saved "
                       "head is the band branch alone; more labels, or a stronger model, may change that.")
    if epochs:
        return line + f" It trained {epochs} epochs on the features, as many as inner folds of your labels chose."
    return line


def metrics_html(result: Dict[str, Any]) -> str:
    """The training's validation: the summary, the head against the random forest, per-class F1 and IoU with
    their spread and held-out labels, the overall figures, the confusion matrix."""
    metrics = result.get("metrics", {}) or {}
    model = str(result.get("model", ""))
    parts = [f"<h3>Head saved</h3><p>{html.escape(os.path.basename(model.rstrip('/')) or model)}"
             f"<br><small>{html.escape(model)}</small></p>"]
    validated = metrics.get("validated", "per_class" in metrics)
    if metrics.get("summary"):
        parts.append(f"<p><b>{html.escape(metrics['summary'])}</b></p>")
    if not validated:
        parts.append(f"<p style='color:#b26a00'>{html.escape(metrics.get('message') or 'Not validated')}</p>")
    elif metrics.get("message"):
        parts.append(f"<p>{html.escape(metrics['message'])}</p>")
    comparison = result.get("comparison") or {}
    if comparison.get("line"):
        parts.append(f"<p>{html.escape(comparison['line'])}</p>")
    how = _how_validated(metrics)
    if how:
        parts.append(f"<p>{html.escape(how)}</p>")
    if result.get("band_context"):
        parts.append(f"<p><small>{html.escape(_band_context_line(result))}</small></p>")
    per_class = metrics.get("per_class") or []
    if per_class:
        with_labels = any("held_out_labels" in c for c in per_class)
        header = ["Class", "F1", "IoU"] + (["Labels"] if with_labels else [])
        rows = []
        for c in per_class:
            cells = [html.escape(str(c.get("class_name"))), _score(c.get("f1"), c.get("f1_std")),
                     _score(c.get("iou"), c.get("iou_std"))]
            if with_labels:
                cells.append(str(c.get("held_out_labels", "–")))
            rows.append("<tr>" + "".join(f"<td nowrap>{v}</td>" for v in cells) + "</tr>")
        head = "".join(f"<th align='left' nowrap>{h}</th>" for h in header)
        parts.append(f"<table cellspacing='0' cellpadding='2'><tr>{head}</tr>{''.join(rows)}</table>")
        parts.append(f"<p>{_scores_line(metrics)}</p>")
    baseline = result.get("baseline")
    if baseline:
        name = html.escape(str(baseline.get("name", "random forest")))
        parts.append(f"<p><b>Baseline</b> ({name}): {_scores_line(baseline)}</p>")
    matrix = metrics.get("confusion_matrix")
    if matrix and matrix.get("matrix"):
        names = [str(n) for n in matrix["classes"]]
        header = "<th></th>" + "".join(f"<th nowrap>{html.escape(_short(n))}</th>" for n in names)
        rows = "".join(f"<tr><th align='left' nowrap>{html.escape(_short(name))}</th>"
                       + "".join(f"<td align='right'>{v:,}</td>" for v in row) + "</tr>"
                       for name, row in zip(names, matrix["matrix"]))
        parts.append("<p><b>Confusion matrix</b> (held-out pixels; rows: true, columns: predicted)</p>"
                     f"<table cellspacing='0' cellpadding='2'><tr>{header}</tr>{rows}</table>")
    return "".join(parts)


def segment_html(result: Dict[str, Any]) -> str:
    counts = result.get("class_px", {})
    total = sum(counts.values()) or 1
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td align='right'>{100 * n / total:.1f} %</td></tr>"
                   for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"<h3>Land cover</h3><p>{result.get('width')} × {result.get('height')} px in {result.get('tiles')} tiles "
            f"on {html.escape(str(result.get('device')))}, {result.get('seconds', 0):.1f} s</p>"
            f"<table cellspacing='2'>{rows}</table>")


def classify_html(result: Dict[str, Any]) -> str:
    """SkySense's class map: the grid and each class's share of it, the warnings."""
    counts = result.get("class_pixels", {})
    total = sum(counts.values()) or 1
    grid = result.get("grid", {})
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td align='right'>{100 * n / total:.1f} %</td></tr>"
                   for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    size = (f"<p>{grid.get('width')} × {grid.get('height')} cells of {grid.get('gsd_m'):g} m</p>"
            if grid.get("width") and grid.get("gsd_m") else "")
    warnings = "".join(f"<p style='color:#b26a00'>{html.escape(w)}</p>" for w in result.get("warnings", []))
    return f"<h3>SkySense classes</h3>{size}{warnings}<table cellspacing='2'>{rows}</table>"


def describe_device(info: Dict[str, Any]) -> str:
    """One line for the dock: the device jobs will use."""
    devices = info.get("devices", [])
    chosen = info.get("device", "cpu")
    for device in devices:
        if device["type"] == "cuda" and chosen == f"cuda:{device['index']}":
            return (f"GPU: {device['name']} ({device['free_memory_mb'] / 1024:.1f} of "
                    f"{device['total_memory_mb'] / 1024:.1f} GiB free) — torch {info.get('torch')}")
    cpu = next((d for d in devices if d["type"] == "cpu"), {})
    torch_version = info.get("torch") or "not installed"
    return f"CPU: {cpu.get('cores', '?')} cores — torch {torch_version}"


def _rows(pairs) -> str:
    return "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in pairs)


def info_html(info: Dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items() if v)
    pairs = [
        ("Device", describe_device(info)),
        ("Python", f"{info.get('python')} ({info.get('executable')})"),
        ("CUDA", info.get("cuda_build") or "CPU-only build"),
        ("Packages", packages),
    ]
    if info.get("gpu_check"):
        pairs.insert(1, ("GPU check", info["gpu_check"]["message"]))
    pairs += list(info.get("benchmarks", {}).items())
    return f"<table cellspacing='4'>{_rows(pairs)}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def inspect_html(result: Dict[str, Any]) -> str:
    area = result["area"]
    resolution = result.get("resolution_m")
    pairs = [
        ("File", os.path.basename(result["path"])),
        ("CRS", result.get("crs_name") or "none"),
        ("Size", f"{result['width']} × {result['height']} px, {result['count']} bands"),
        ("Resolution", f"{resolution[0]:.3g} × {resolution[1]:.3g} m" if resolution else "unknown (no CRS)"),
        ("Area", f"{area['window']['width']} × {area['window']['height']} px"
                 + (f", {area['area_km2']:.3f} km²" if area.get("area_km2") is not None else "")),
    ]
    if area.get("decimation", 1) > 1:
        pairs.append(("Sampled", f"every {area['decimation']:.1f} px ({area['sampled_px']:,} px)"))
    nodata = {band["nodata"] for band in result["bands"]}
    pairs.append(("Nodata", ", ".join(_fmt(v) for v in nodata)))
    header = "".join(f"<th align='right' nowrap>{h}</th>" for h in ("Band", "Type", "P2", "Median", "P98", "Valid"))
    rows = []
    for band in result["bands"]:
        stats = band["statistics"]
        name = band["description"] or band["colour"] or f"band {band['index']}"
        cells = [f"{band['index']} {name}", band["dtype"], stats.get("p2"), stats.get("p50"), stats.get("p98"),
                 f"{stats.get('valid_px', 0):,}"]
        rows.append("<tr>" + "".join(f"<td align='right' nowrap>{html.escape(_fmt(c))}</td>" for c in cells)
                    + "</tr>")
    warnings = "".join(f"<p style='color:#b26a00'>{html.escape(w)}</p>" for w in result.get("warnings", []))
    return (f"<h3>{html.escape(os.path.basename(result['path']))}</h3>{warnings}"
            f"<table cellspacing='4'>{_rows(pairs)}</table>"
            f"<table border='0' cellspacing='2' cellpadding='3'><tr>{header}</tr>{''.join(rows)}</table>")


def prototypes_html(result: Dict[str, Any]) -> str:
    regions = result.get("regions", [])
    count = result.get("region_count")
    of = f" of {count}" if count else ""
    listed = ", ".join(f"region {r}{of}" for r in regions[:6]) + (", …" if len(regions) > 6 else "")
    return (f"<h3>Prototype map</h3><p>The area spans {len(regions)} region{'s' * (len(regions) != 1)}: "
            f"{html.escape(listed)}.</p><p>Click <b>Identify</b>, then a cell of the map: its similarity to every "
            "prototype of its region, in a window beside the map.</p>")


def warnings_html(warnings: list) -> str:
    return "".join(f"<p style='color:#b26a00'>&#9888; {html.escape(str(w))}</p>" for w in warnings)


#: The page each task's result gets.
RESULT_PAGES = {"train": metrics_html, "train-skysense": metrics_html, "segment": segment_html,
                "classify": classify_html, "prototypes": prototypes_html, "inspect": inspect_html}
