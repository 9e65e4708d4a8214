"""``make demo``: Terrafuse in QGIS, headless, on the bundled sample scene.

Loads the plugin into a headless QGIS, opens the sample Sentinel-2 scene, chooses an area, runs the
jobs that exist through the dock (the backend check and the inspect job, in the worker), and
writes what a user would see: the map and the dock as PNG files, and the results as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.qgis_headless import HeadlessInterface, start_qgis  # noqa: E402

STILL_TO_COME = ("in this demo, training a head on bundled sample labels, mapping the scene and the SkySense "
                 "prototype map (the dock's Train, Segment and Prototypes tasks do them today)")
# A polygon over the salt marsh and the fields west of it (WGS 84 / UTM zone 18N).
DEMO_AREA_WKT = ("POLYGON((443900 4172900, 447300 4173300, 447900 4169900, 446200 4168200, "
                 "443700 4168900, 443900 4172900))")


def import_plugin_package():
    """The checkout as a plugin package named 'terrafuse', as QGIS would install it."""
    link_dir = Path(tempfile.mkdtemp(prefix="terrafuse-demo-"))
    (link_dir / "terrafuse").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    return importlib.import_module("terrafuse")


def wait_for_job(app, dock, start_job) -> dict:
    finished: list[dict] = []
    dock.jobDone.connect(lambda job, outcome: finished.append(outcome))
    start_job()
    deadline = time.monotonic() + 600
    while not finished and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    if not finished:
        raise SystemExit("the job did not finish within 10 minutes")
    return finished[0]


def style_scene(layer) -> None:
    """True colour (B04, B03, B02) with a 2-98 % stretch, as a user would set it."""
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsRasterBandStats

    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    for band, setter in ((3, renderer.setRedContrastEnhancement), (2, renderer.setGreenContrastEnhancement),
                         (1, renderer.setBlueContrastEnhancement)):
        stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.All)
        enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(stats.mean - 1.5 * stats.stdDev)
        enhancement.setMaximumValue(stats.mean + 2.5 * stats.stdDev)
        setter(enhancement)
    layer.setRenderer(renderer)


def area_layer(crs):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer(f"Polygon?crs={crs.authid()}", "Demo area", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(DEMO_AREA_WKT))
    layer.dataProvider().addFeatures([feature])
    layer.loadNamedStyle(str(ROOT / "resources" / "styles" / "area_outline.qml"))
    return layer


def render_map(layers, extent, crs, path: Path, size_px: int = 900) -> None:
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(size_px, size_px))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--image", type=Path, default=ROOT / "resources" / "sample" / "sentinel2_coast.tif")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    app = start_qgis()
    from qgis.core import QgsProject, QgsRasterLayer

    iface = HeadlessInterface()
    iface.window.show()
    plugin = import_plugin_package().classFactory(iface)
    plugin.initGui()
    plugin.action.trigger()  # the toolbar button opens the dock
    dock = plugin.dock

    scene = QgsRasterLayer(str(args.image), args.image.stem)
    if not scene.isValid():
        raise SystemExit(f"cannot open {args.image}")
    style_scene(scene)
    area = area_layer(scene.crs())
    project = QgsProject.instance()
    project.setCrs(scene.crs())
    project.addMapLayers([scene, area])
    iface.canvas.setDestinationCrs(scene.crs())
    iface.canvas.setExtent(scene.extent())

    print("Terrafuse demo: checking the backend…", flush=True)
    info = wait_for_job(app, dock, dock.check_backend)
    if info["status"] != "ok":
        raise SystemExit(f"backend check failed: {info['message']}")
    print(f"  {dock.backendLabel.text()}")

    dock.rasterCombo.setLayer(scene)
    dock.set_task("inspect")
    dock.set_area_mode("layer")
    dock.areaLayerCombo.setLayer(area)
    print(f"Inspecting {args.image.name} over the demo area ({dock.areaLabel.text()})…", flush=True)
    outcome = wait_for_job(app, dock, dock.run_task)
    if outcome["status"] != "ok":
        raise SystemExit(f"inspect failed: {outcome['message']}")
    result = outcome["result"]
    (out / "inspect.json").write_text(json.dumps(result, indent=2))
    (out / "backend.json").write_text(json.dumps(info["result"], indent=2))

    for _ in range(20):  # let the dock lay out and the canvas render before the screenshots
        app.processEvents()
        time.sleep(0.05)
    render_map([area, scene], scene.extent(), scene.crs(), out / "map.png")
    dock.grab().save(str(out / "dock.png"))
    iface.window.grab().save(str(out / "qgis.png"))
    diagnostics = wait_for_job(app, dock, dock.show_diagnostics)
    (out / "diagnostics.txt").write_text(diagnostics["result"]["report"])
    dock.diagnostics_dialog.grab().save(str(out / "diagnostics.png"))
    dock.diagnostics_dialog.close()

    window = result["area"]["window"]
    print(f"  CRS {result['crs_name']}, {result['resolution_m'][0]:g} m pixels, "
          f"area {window['width']} x {window['height']} px = {result['area']['area_km2']:.2f} km²")
    for band in result["bands"]:
        stats = band["statistics"]
        print(f"  band {band['index']} {band['description']:<10} {band['dtype']:<7} "
              f"p2 {stats['p2']:>7.0f}  median {stats['p50']:>7.0f}  p98 {stats['p98']:>7.0f}")
    print(f"Outputs in {out}: map.png, dock.png, qgis.png, inspect.json, backend.json, diagnostics.txt/.png")
    print(f"Still to come: {STILL_TO_COME}.")
    plugin.unload()
    project.clear()
    sys.stdout.flush()
    # QGIS 3.22 can crash while tearing down a headless application; the work is saved, so leave now.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
