"""``make demo``: Terrafuse in QGIS, headless, on the bundled sample scene and its labels.

Loads the plugin into a headless QGIS, opens the sample Sentinel-2 scene and the sample labels, and runs
the main flows through the dock, each job in the worker as a user's click runs it:

1. checks the backend;
2. trains a SatDiFuser head from the labels on the bundled diffusion backbone, and prints its hold-out metrics;
3. maps the whole scene with that head (class raster, confidence, class polygons);
4. trains a SkySense head from the same labels on the bundled SkySense, prints its metrics, and classifies
   the scene with it;
5. maps the scene's SkySense geo-prototypes (each pixel's most similar prototype of its region);

then writes a QGIS project (``terrafuse-demo.qgz``) with every layer styled, a PNG of the maps
(``map.png``), the dock and the window as PNG files, and every job's result as JSON. Everything runs offline
on the bundled models (demo-grade: see their model cards).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.qgis_headless import HeadlessInterface, start_qgis  # noqa: E402

SAMPLE = ROOT / "resources" / "sample"
BUNDLED_SKYSENSE = ROOT / "resources" / "models" / "terrafuse-tiny-skysense"
#: The sample scene carries no acquisition date, and SkySense's day-of-year encoding needs one: the nominal
#: date the bundled SkySense was pretrained with (see its model card).
SCENE_DATE = "2018-06-15"
JOB_TIMEOUT_S = 900
PANEL_PX = 640


def import_plugin_package():
    """The checkout as a plugin package named 'terrafuse', as QGIS would install it."""
    link_dir = Path(tempfile.mkdtemp(prefix="terrafuse-demo-"))
    (link_dir / "terrafuse").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    return importlib.import_module("terrafuse")


def pump(app, done, what: str) -> None:
    """Run the event loop until ``done()`` (QGIS tasks report through it)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not done() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    if not done():
        raise SystemExit(f"{what} did not finish within {JOB_TIMEOUT_S} s")


def run_in_dock(app, dock, job: str, options: dict[str, Any]) -> dict[str, Any]:
    """Choose the task in the dock, fill its options as a user would, click Run and wait; the job's result.

    A job the dock does not list yet runs in the same worker through the same task class, and its layers
    are added the way the dock adds them."""
    outcomes: list[dict[str, Any]] = []
    in_dock = dock.taskCombo.findData(job) >= 0
    if in_dock:
        dock.set_task(job)
        flush_deletes()  # the previous task's options form goes now, as an event loop would take it
        for name, value in options.items():
            if name in dock.options_form.widgets:
                dock.options_form.set_value(name, value)
        series = {k: v for k, v in options.items() if k not in dock.options_form.widgets}
        if series:
            fill_series_table(app, dock, series)
            dates_table = importlib.import_module(f"{sys.modules['terrafuse'].__name__}.plugin.dates_table")
            try:
                dock.series_table.job_params()
            except dates_table.InputsError as exc:  # the table's own check refuses them: say so, run as given
                print(f"  (the dock's input table says: {exc}; running {job} with these inputs directly)")
                in_dock = False
    if in_dock:
        slot = lambda finished_job, outcome: outcomes.append(outcome)  # noqa: E731
        dock.jobDone.connect(slot)
        dock.runButton.click()
        pump(app, lambda: bool(outcomes), job)
        dock.jobDone.disconnect(slot)
    else:
        from qgis.core import QgsApplication

        package = sys.modules["terrafuse"].__name__
        tasks = importlib.import_module(f"{package}.plugin.tasks")
        layers = importlib.import_module(f"{package}.plugin.layers")
        jobs = importlib.import_module(f"{package}.backend.jobs")
        params = dict(options)
        if "labels" in {p.name for p in jobs.JOBS[job].params} and dock.labels_panel.labels is not None:
            params.setdefault("labels", dock.labels_panel.labels.path)
        task = tasks.JobTask(dock.client, job, params, f"Terrafuse: {jobs.JOBS[job].title}")
        task.jobFinished.connect(outcomes.append)
        QgsApplication.taskManager().addTask(task)
        pump(app, lambda: bool(outcomes), job)
        if outcomes[0]["status"] == "ok" and outcomes[0]["result"].get("layers"):
            layers.add_result_layers(outcomes[0]["result"], jobs.JOBS[job].title)
    outcome = outcomes[0]
    if outcome["status"] != "ok":
        raise SystemExit(f"{job} failed: {outcome.get('message')}")
    return outcome["result"]


def flush_deletes() -> None:
    """Widgets scheduled for deletion go now: a plain processEvents() leaves them on screen."""
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QCoreApplication.processEvents()


def fill_series_table(app, dock, series: dict[str, Any]) -> None:
    """The SkySense inputs as a user gives them: rasters added to the dock's date table with their
    modality, the dates read by the worker, and a date typed where the file carries none."""
    table = dock.series_table
    for modality in ("hr", "s2", "s1"):
        paths = [p for p in str(series.get(modality) or "").split(",") if p]
        if paths:
            table.add_paths(paths, modality)
    pump(app, lambda: getattr(dock, "series_task", None) is None, "reading the dates")
    for modality in ("s2", "s1"):
        dates = [d for d in str(series.get(f"{modality}_dates") or "").split(",") if d]
        rows = table.by_modality().get(modality, [])
        for row, date in zip(rows, dates):
            if not table.date_text(row):
                table.set_date(row, date)


def style_scene(layer) -> None:
    """True colour (B04, B03, B02) with a stretch from the band statistics, as a user would set it."""
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsRasterBandStats

    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    for band, setter in ((3, renderer.setRedContrastEnhancement), (2, renderer.setGreenContrastEnhancement),
                         (1, renderer.setBlueContrastEnhancement)):
        stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.Stats.All)
        enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        enhancement.setMinimumValue(stats.mean - 1.5 * stats.stdDev)
        enhancement.setMaximumValue(stats.mean + 2.5 * stats.stdDev)
        setter(enhancement)
    layer.setRenderer(renderer)


def print_metrics(title: str, result: dict[str, Any]) -> None:
    """The honest figures: mean ± spread over the spatial folds, what they rest on, and the baseline on the
    same folds."""
    metrics = result.get("metrics", {})
    print(f"  {title}: {metrics.get('summary') or metrics.get('message', '')}", flush=True)
    for row in metrics.get("per_class", []):
        print(f"    {row.get('class_name', ''):<11} F1 {_spread(row, 'f1'):>11}  IoU {_spread(row, 'iou'):>11}  "
              f"({row.get('held_out_labels', 0)} held-out labels, {row.get('support_px', 0):,} px)")
    baseline = result.get("baseline")
    if baseline and baseline.get("validated"):
        print(f"    baseline, {baseline.get('name', 'random forest')}: mIoU {_spread(baseline, 'miou')}, overall "
              f"accuracy {_spread(baseline, 'overall_accuracy')}")
    if result.get("comparison"):
        print(f"    {result['comparison']['line']}")
    print("    (The bundled models were pretrained on imagery that includes this scene: their figures here are "
          "a demonstration, not a benchmark; see docs/quality.md.)")


def _spread(row: dict[str, Any], key: str) -> str:
    value, std = row.get(key), row.get(f"{key}_std")
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def print_layers(result: dict[str, Any]) -> None:
    for entry in result.get("layers", []):
        print(f"  {entry.get('name', '')}: {entry.get('path', '')}")


def render(layers, extent, crs, size_px: int):
    """One map image of ``layers`` (top first) over ``extent``."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(size_px, size_px))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def legend_entries(layer) -> list[tuple[str, Any]]:
    """(label, colour) of a paletted raster's classes."""
    renderer = layer.renderer()
    if not hasattr(renderer, "classes"):
        return []
    # "prototype 7" -> "7": sixteen prototypes fit two legend rows; the panel's title names them.
    return [(c.label.replace("prototype ", ""), c.color) for c in renderer.classes()]


def compose_map(panels: list[tuple[str, Any, list[tuple[str, Any]]]], path: Path) -> None:
    """Panels side by side in a grid of two columns, each with its title and legend, saved as PNG."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

    columns, title_px, legend_px, margin = 2, 34, 56, 12
    rows = (len(panels) + columns - 1) // columns
    cell_w, cell_h = PANEL_PX + margin, title_px + PANEL_PX + legend_px
    image = QImage(columns * cell_w + margin, rows * cell_h + margin, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    for index, (title, picture, legend) in enumerate(panels):
        x = margin + (index % columns) * cell_w
        y = margin + (index // columns) * cell_h
        painter.setPen(QColor("#222222"))
        painter.setFont(QFont("DejaVu Sans", 13, QFont.Weight.Bold))
        align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        painter.drawText(QRect(x, y, PANEL_PX, title_px), align, title)
        painter.drawImage(x, y + title_px, picture)
        painter.setPen(QColor("#888888"))
        painter.drawRect(x, y + title_px, PANEL_PX - 1, PANEL_PX - 1)
        painter.setFont(QFont("DejaVu Sans", 10))
        lx, ly = x, y + title_px + PANEL_PX + 8
        for label, colour in legend:
            width = 22 + painter.fontMetrics().horizontalAdvance(label) + 14
            if lx + width > x + PANEL_PX:
                lx, ly = x, ly + 22
            painter.fillRect(lx, ly + 3, 16, 14, colour)
            painter.setPen(QColor("#444444"))
            painter.drawRect(lx, ly + 3, 16, 14)
            painter.setPen(QColor("#222222"))
            painter.drawText(lx + 22, ly + 15, label)
            lx += width
    painter.end()
    image.save(str(path))


def open_in_dock(image: Path, labels_path: Path) -> tuple[Any, Any, Any, Any, Any, Any]:
    """A headless QGIS with the plugin's dock open on ``image`` (styled) and the labels GeoPackage adopted by
    the Labels section, as a user would set it up: (app, iface, plugin, dock, scene layer, labels layer)."""
    # The backend's usual cache (features, hashes), not the throw-away one the headless QGIS of the tests
    # makes: a second run reuses the first one's backbone features.
    os.environ.setdefault("TERRAFUSE_CACHE_DIR", str(Path.home() / ".cache" / "terrafuse"))
    app = start_qgis()
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    iface = HeadlessInterface()
    iface.window.show()
    plugin = import_plugin_package().classFactory(iface)
    plugin.initGui()
    plugin.action.trigger()  # the toolbar button opens the dock
    dock = plugin.dock
    scene = QgsRasterLayer(str(image), "Sentinel-2 scene")
    if not scene.isValid():
        raise SystemExit(f"cannot open {image}")
    style_scene(scene)
    labels = QgsVectorLayer(f"{labels_path}|layername=labels", "Sample labels", "ogr")
    if not labels.isValid():
        raise SystemExit(f"cannot open {labels_path}")
    project = QgsProject.instance()
    project.setCrs(scene.crs())
    project.addMapLayers([labels, scene])
    iface.canvas.setDestinationCrs(scene.crs())
    iface.canvas.setExtent(scene.extent())
    dock.rasterCombo.setLayer(scene)
    dock.set_area_mode("whole")
    dock.labels_panel.adopt(labels)  # the dock's Labels section: classes and colours from the GeoPackage
    if dock.labels_panel.labels is None:
        raise SystemExit(f"{labels_path} is not a labels layer the dock can adopt")
    return app, iface, plugin, dock, scene, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--image", type=Path, default=SAMPLE / "sentinel2_coast.tif")
    parser.add_argument("--labels", type=Path, default=SAMPLE / "sentinel2_coast_labels.gpkg")
    parser.add_argument("--skysense", type=Path, default=BUNDLED_SKYSENSE, help="SkySense folder to start from")
    args = parser.parse_args()
    out = args.out.resolve()
    started = time.monotonic()
    for name in ("satdifuser-head", "segment", "skysense-head", "classify", "prototypes"):
        shutil.rmtree(out / name, ignore_errors=True)  # a rerun replaces the last run's outputs
    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / "labels.gpkg"  # a copy: QGIS opens the labels for editing, the bundled file stays as is
    shutil.copyfile(args.labels, labels_path)

    app, iface, plugin, dock, scene, labels = open_in_dock(args.image, labels_path)
    from qgis.core import QgsProject

    project = QgsProject.instance()
    counts = dock.labels_panel.labels.counts()
    classes = {c.class_id: c.name for c in dock.labels_panel.labels.classes()}
    print(f"Terrafuse demo on {args.image.name} with {sum(counts.values())} labels: "
          + ", ".join(f"{n} {classes[i]}" for i, n in counts.items()), flush=True)

    print("Checking the backend…", flush=True)
    outcomes: list[dict[str, Any]] = []
    dock.jobDone.connect(lambda job, outcome: outcomes.append(outcome))
    dock.checkBackendButton.click()
    pump(app, lambda: bool(outcomes), "the backend check")
    if outcomes[0]["status"] != "ok":
        raise SystemExit(f"backend check failed: {outcomes[0]['message']}")
    selftest = outcomes[0]["result"]
    print(f"  {dock.backendLabel.text()}")
    results: dict[str, Any] = {"selftest": selftest}

    print("Training a SatDiFuser head from the labels (bundled terrafuse-tiny backbone)…", flush=True)
    results["train"] = run_in_dock(app, dock, "train", {"out": str(out / "satdifuser-head"), "preview": False})
    print_metrics("SatDiFuser head", results["train"])

    print("Mapping the scene with it…", flush=True)
    results["segment"] = run_in_dock(app, dock, "segment", {"model": results["train"]["model"],
                                                            "out": str(out / "segment")})
    print_layers(results["segment"])

    skysense = {"model": str(args.skysense), "s2": str(args.image), "s2_dates": SCENE_DATE}
    print("Training a SkySense head from the labels (bundled terrafuse-tiny-skysense)…", flush=True)
    results["train-skysense"] = run_in_dock(app, dock, "train-skysense",
                                            {**skysense, "out": str(out / "skysense-head")})
    print_metrics("SkySense head", results["train-skysense"])
    skysense_head = results["train-skysense"]["model"]

    print("Classifying the scene with SkySense…", flush=True)
    results["classify"] = run_in_dock(app, dock, "classify", {**skysense, "model": skysense_head,
                                                              "out": str(out / "classify")})
    pixels = results["classify"].get("class_pixels", {})
    total = max(1, sum(pixels.values()))
    print("  " + ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in pixels.items()))
    print_layers(results["classify"])

    print("Mapping the SkySense geo-prototypes…", flush=True)
    results["prototypes"] = run_in_dock(app, dock, "prototypes", {**skysense, "model": skysense_head,
                                                                  "out": str(out / "prototypes")})
    document = json.loads(Path(results["prototypes"]["outputs"]["json"]).read_text(encoding="utf-8"))
    for region in document["regions"]:
        used = [p for p in region["prototypes"] if p["pixels"]]
        nearest = sorted({p["nearest_class"]["name"] for p in used if "nearest_class" in p})
        print(f"  region {region['region']}: {len(used)} of {len(region['prototypes'])} prototypes in use; "
              f"nearest classes {', '.join(nearest) or '-'}")

    for job, result in results.items():
        (out / f"{job}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")

    flush_deletes()
    for _ in range(20):  # let the dock lay out and the canvas render before the screenshots
        app.processEvents()
        time.sleep(0.05)
    project_path = out / "terrafuse-demo.qgz"
    project.setTitle("Terrafuse demo: sample Sentinel-2 scene")
    if not project.write(str(project_path)):
        raise SystemExit(f"cannot write {project_path}: {project.error()}")

    extent, crs = scene.extent(), scene.crs()
    label_legend = [(c.name, _qcolor(c.colour)) for c in dock.labels_panel.labels.classes()]
    panels = [("Sentinel-2 scene (B4, B3, B2) and the labels", render([labels, scene], extent, crs, PANEL_PX),
               label_legend)]
    for title, layer_name in (("SatDiFuser land cover (terrafuse-tiny)", results["segment"]["layers"]),
                              ("SkySense classes (terrafuse-tiny-skysense)", results["classify"]["layers"]),
                              ("SkySense geo-prototypes (nearest of the region's 16)",
                               results["prototypes"]["layers"])):
        raster = _first_raster(project, layer_name)
        shown = [raster] if raster is not None else []
        panels.append((title, render(shown + [scene], extent, crs, PANEL_PX),
                       legend_entries(raster) if raster is not None else []))
    compose_map(panels, out / "map.png")
    dock.grab().save(str(out / "dock.png"))
    iface.window.grab().save(str(out / "qgis.png"))

    print(f"Done in {time.monotonic() - started:.0f} s. Outputs in {out}:")
    print("  terrafuse-demo.qgz  the QGIS project (open it with QGIS: every layer styled)")
    print("  map.png             the scene and labels, the SatDiFuser map, the SkySense classes and prototypes")
    print("  dock.png, qgis.png  what the user sees; *.json the jobs' results")
    print("  satdifuser-head/, segment/, skysense-head/, classify/, prototypes/  the models and maps")
    plugin.unload()
    project.clear()
    sys.stdout.flush()
    # QGIS 3.22 can crash while tearing down a headless application; the work is saved, so leave now.
    os._exit(0)


def _qcolor(colour: str):
    from qgis.PyQt.QtGui import QColor

    return QColor(colour)


def _first_raster(project, entries: list[dict[str, Any]]):
    """The layer of the first visible raster output of a job (the map the job is about)."""
    from qgis.core import QgsRasterLayer

    for entry in entries:
        if entry.get("kind") == "raster":
            for layer in project.mapLayers().values():
                if isinstance(layer, QgsRasterLayer) and Path(layer.source()) == Path(entry["path"]):
                    return layer
    return None


if __name__ == "__main__":
    sys.exit(main())
