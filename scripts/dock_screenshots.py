"""The README's screenshots of the dock, one per task, at the dock's default width (headless QGIS, Xvfb).

Opens the sample scene and the sample labels in a headless QGIS, runs each task through the dock as a user's
click runs it (on the bundled models), and saves the dock as it then looks to ``docs/images/dock_<task>.png``;
also the Labels section with its label list (``dock_labels.png``), the identify window of a prototype map
(``prototype_identify.png``) and the whole QGIS window after Inspect (``qgis_inspect.png``). Run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv-qgis/bin/python scripts/dock_screenshots.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.demo import (  # noqa: E402
    BUNDLED_SKYSENSE,
    SAMPLE,
    SCENE_DATE,
    flush_deletes,
    open_in_dock,
    run_in_dock,
)

IMAGES = ROOT / "docs" / "images"


def settle(app, seconds: float = 1.0) -> None:
    flush_deletes()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)


def save_dock(app, dock, name: str, top_widget=None) -> Path:
    """The dock scrolled so that ``top_widget`` (the Task section by default) is at its top."""
    settle(app)
    widget = top_widget or dock.taskGroup
    dock._scroll.verticalScrollBar().setValue(widget.mapTo(dock.dockContents, widget.rect().topLeft()).y() - 4)
    settle(app, 0.3)
    path = IMAGES / name
    dock.grab().save(str(path))
    print(f"  {path.relative_to(ROOT)} ({dock.width()} px wide)", flush=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder of the runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="terrafuse-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    labels_path = work / "labels.gpkg"
    shutil.copyfile(SAMPLE / "sentinel2_coast_labels.gpkg", labels_path)
    app, iface, plugin, dock, _, _ = open_in_dock(SAMPLE / "sentinel2_coast.tif", labels_path)
    from qgis.PyQt.QtCore import QPoint

    IMAGES.mkdir(parents=True, exist_ok=True)

    print("Labels", flush=True)
    dock.labelsGroup.setCollapsed(False)
    dock.labels_panel.labelList.topLevelItem(2).setSelected(True)
    save_dock(app, dock, "dock_labels.png", dock.labelsGroup)
    dock.labelsGroup.setCollapsed(True)

    print("Inspect", flush=True)
    run_in_dock(app, dock, "inspect", {})
    save_dock(app, dock, "dock_inspect.png")
    iface.canvas.refresh()
    settle(app, 3.0)  # the canvas renders the scene and the labels
    iface.window.grab().save(str(IMAGES / "qgis_inspect.png"))

    print("Train (SatDiFuser head on the bundled backbone)", flush=True)
    train = run_in_dock(app, dock, "train", {"out": str(work / "head"), "preview": False})
    save_dock(app, dock, "dock_train.png")

    print("Segment", flush=True)
    run_in_dock(app, dock, "segment", {"model": train["model"], "out": str(work / "segment")})
    save_dock(app, dock, "dock_segment.png")

    skysense = {"model": str(BUNDLED_SKYSENSE), "s2": str(SAMPLE / "sentinel2_coast.tif"), "s2_dates": SCENE_DATE}
    print("Train SkySense", flush=True)
    head = run_in_dock(app, dock, "train-skysense", {**skysense, "out": str(work / "skysense-head")})
    save_dock(app, dock, "dock_train_skysense.png")

    print("Classify (SkySense)", flush=True)
    run_in_dock(app, dock, "classify", {**skysense, "model": head["model"], "out": str(work / "classify")})
    save_dock(app, dock, "dock_classify.png")

    print("Prototypes (SkySense)", flush=True)
    run_in_dock(app, dock, "prototypes", {**skysense, "model": head["model"], "out": str(work / "prototypes")})
    settle(app)
    viewport = iface.canvas.viewport()
    click = QPoint(viewport.width() // 3, viewport.height() // 2)
    dock.identifyPrototypeButton.setChecked(True)
    point = iface.canvas.getCoordinateTransform().toMapCoordinates(click)
    dock._identify_tool.last_click = click
    info = dock._identify_tool.prototype_map(dock.prototypeLayerCombo.currentLayer()).identify(
        point, iface.canvas.mapSettings().destinationCrs())
    dock.show_identified(info)
    save_dock(app, dock, "dock_prototypes.png")
    dock.identify_panel.grab().save(str(IMAGES / "prototype_identify.png"))
    plugin.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main())
