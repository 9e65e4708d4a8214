"""End-to-end time of segmenting 1 km2 at 1 m (1000 x 1000 px) with the bundled backbone on this machine.

Goal (issue 9): under 60 s on the 2-core CPU, end to end: the ``python -m backend segment`` process from
its start to its exit (Python and torch imports, backbone and head loading, reading, the model, blending,
writing classes.tif, confidence.tif and classes.gpkg). A head is first trained with ``python -m backend
train`` on the bundled Sentinel-2 sample and six labelled boxes (not timed against the goal); the 1 km2
scene is the sample resampled to 1000 x 1000 px with 1 m pixels. ``--breakdown`` runs the same job once
more inside this process with a timer on the model's forward, to show where the time goes.

    .venv/bin/python benchmarks/segment_1km2.py [--repeats 3] [--batch-size 4] [--breakdown] [--keep DIR]

The machine's load average is printed with every run: on a shared machine, take the figure of a run made
while the load was low.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_SCENE = ROOT / "resources" / "sample" / "sentinel2_coast.tif"
#: Upper-left corner of the sample scene (UTM 18N) and its pixel size (m).
X0_M, Y0_M, PIXEL_M = 443330.0, 4173860.0, 10.0
#: Labelled boxes in the sample's pixels (col0, row0, col1, row1): water, marsh and a field.
LABEL_BOXES = [
    ("water", (330, 10, 380, 50)), ("water", (420, 20, 470, 60)),
    ("marsh", (256, 192, 316, 250)), ("marsh", (396, 92, 418, 122)),
    ("marsh", (322, 152, 354, 188)), ("field", (258, 44, 280, 88)),
]
SIDE_PX = 1000
GOAL_S = 60.0


def write_labels(path: Path) -> Path:
    import numpy as np
    import pyogrio
    import shapely

    boxes = [shapely.box(X0_M + c0 * PIXEL_M, Y0_M - r1 * PIXEL_M, X0_M + c1 * PIXEL_M, Y0_M - r0 * PIXEL_M)
             for _, (c0, r0, c1, r1) in LABEL_BOXES]
    names = np.array([name for name, _ in LABEL_BOXES], dtype=object)
    pyogrio.raw.write(str(path), np.array(shapely.to_wkb(boxes), dtype=object), field_data=[names],
                      fields=["class_name"], crs="EPSG:32618", geometry_type="Polygon", driver="GPKG")
    return path


def write_scene(path: Path, side_px: int = SIDE_PX) -> Path:
    """The sample scene resampled (bilinear) to ``side_px`` square with 1 m pixels: 1 km2 for 1000 px."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    with rasterio.open(SAMPLE_SCENE) as src:
        data = src.read(out_shape=(src.count, side_px, side_px), resampling=Resampling.bilinear)
        profile = src.profile
    profile.update(width=side_px, height=side_px, transform=from_origin(X0_M, Y0_M, 1.0, 1.0), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def backend_cli(*args: str) -> tuple[dict[str, Any], float]:
    """``python -m backend --quiet ARGS``: its JSON result and its wall time from start to exit."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "backend", "--quiet", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"python -m backend {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):]), seconds


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def breakdown(scene: Path, head: Path, out: Path, batch_size: int) -> dict[str, float]:
    """The segment job in this process, with the model's forward timed apart from the rest."""
    import torch

    from backend.models.segmenter import SatDiFuser
    from backend.progress import Progress
    from backend.worker import run_job

    spent = {"model_s": 0.0, "calls": 0}
    forward = SatDiFuser.forward

    def timed(self: SatDiFuser, images: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        try:
            return forward(self, images)
        finally:
            spent["model_s"] += time.perf_counter() - started
            spent["calls"] += 1

    SatDiFuser.forward = timed  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        result = run_job("segment", {"image": str(scene), "model": str(head), "out": str(out),
                                     "batch_size": batch_size}, Progress())
        total = time.perf_counter() - started
    finally:
        SatDiFuser.forward = forward  # type: ignore[method-assign]
    return {"job_s": total, "model_s": spent["model_s"], "model_calls": spent["calls"], "tiles": result["tiles"],
            "other_s": total - spent["model_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed segment runs (the best counts)")
    parser.add_argument("--batch-size", type=int, default=4, help="the segment job's batch_size")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the head's training")
    parser.add_argument("--breakdown", action="store_true", help="also time the model apart from the rest")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="terrafuse-1km2-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        labels = write_labels(folder / "labels.gpkg")
        trained, train_s = backend_cli("train", "--image", str(SAMPLE_SCENE), "--labels", str(labels),
                                       "--out", str(folder / "head"), "--no-preview", "--epochs", str(args.epochs),
                                       "--cache-dir", str(folder / "feature-cache"))
        print(f"trained a {trained['head']} head (terrafuse-tiny) on {trained['tiles']} tiles of "
              f"{trained['tile_px']} px in {train_s:.1f} s, hold-out mIoU {trained['metrics'].get('miou')}", flush=True)
        scene = write_scene(folder / "scene_1km2.tif")
        runs = []
        for repeat in range(args.repeats):
            before = load()
            result, seconds = backend_cli("segment", "--image", str(scene), "--model", str(folder / "head"),
                                          "--out", str(folder / f"out-{repeat}"), "--batch-size", str(args.batch_size))
            runs.append({"process_s": seconds, "job_s": result["seconds"], "load_before": before, "load_after": load(),
                         "tiles": result["tiles"], "tile_px": result["tile_px"], "polygons": result["polygons"],
                         "device": result["device"]})
            print(f"run {repeat + 1}: {seconds:.1f} s end to end (the job itself {result['seconds']:.1f} s), "
                  f"{result['tiles']} tiles of {result['tile_px']} px, {result['polygons']} polygons, "
                  f"load {before} -> {runs[-1]['load_after']}", flush=True)
        if args.breakdown:
            parts = breakdown(scene, folder / "head", folder / "out-breakdown", args.batch_size)
            print(f"in-process run: job {parts['job_s']:.1f} s, of which the model's forward {parts['model_s']:.1f} s "
                  f"({parts['model_calls']} calls, {parts['tiles']} tiles: {parts['model_s'] / parts['tiles']:.2f} s "
                  f"a tile); reading, blending, writing and polygons {parts['other_s']:.1f} s; load {load()}")
    best = min(runs, key=lambda r: r["process_s"])
    verdict = "meets" if best["process_s"] < GOAL_S else "MISSES"
    print(f"1 km2 at 1 m ({SIDE_PX} x {SIDE_PX} px) end to end: best {best['process_s']:.1f} s of {len(runs)} runs "
          f"on {best['device']} ({os.cpu_count()} cores), {verdict} the {GOAL_S:.0f} s goal; load at that run "
          f"{best['load_before']} -> {best['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
