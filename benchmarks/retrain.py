"""Retraining after a new label, with the backbone's features cached (issue 5's target: at most 10 s on two
CPU cores with the bundled backbone).

Draws 10 polygons of 5 classes (2 each) on the sample Sentinel-2 scene, trains once (features computed and
cached), then retrains the same way as the worker would after a new label: in the same process (the
backbone stays loaded) with the features read from the cache. Prints both times and their parts.

    python benchmarks/retrain.py [--backbone terrafuse-tiny] [--threads 2] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import shapely
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.progress import Progress  # noqa: E402
from backend.worker import run_job  # noqa: E402

SAMPLE = ROOT / "resources" / "sample" / "sentinel2_coast.tif"
#: Upper-left corner (UTM 18N) and pixel size of the sample scene.
X0_M, Y0_M, PIXEL_M = 443330.0, 4173860.0, 10.0
#: (class, pixel box col0, row0, col1, row1): two polygons of each of five classes, in different grid tiles.
POLYGONS = (
    ("water", (330, 10, 380, 50)), ("water", (420, 300, 470, 340)),
    ("marsh", (256, 192, 316, 250)), ("marsh", (396, 92, 418, 122)),
    ("field", (258, 44, 280, 88)), ("field", (60, 300, 100, 330)),
    ("forest", (100, 100, 130, 130)), ("forest", (520, 520, 560, 550)),
    ("sand", (200, 400, 230, 420)), ("sand", (560, 200, 590, 230)),
)


def write_labels(path: Path) -> Path:
    boxes = [shapely.box(X0_M + c0 * PIXEL_M, Y0_M - r1 * PIXEL_M, X0_M + c1 * PIXEL_M, Y0_M - r0 * PIXEL_M)
             for _, (c0, r0, c1, r1) in POLYGONS]
    pyogrio.raw.write(str(path), np.array(shapely.to_wkb(boxes), dtype=object),
                      field_data=[np.array([name for name, _ in POLYGONS], dtype=object)], fields=["class_name"],
                      crs="EPSG:32618", geometry_type="Polygon", driver="GPKG")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="terrafuse-tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="terrafuse-retrain-") as scratch:
        folder = Path(scratch)
        params = {"image": str(SAMPLE), "labels": str(write_labels(folder / "labels.gpkg")),
                  "backbone": args.backbone, "cache_dir": str(folder / "cache"), "epochs": args.epochs,
                  "preview": False}
        timings = []
        for run in ("first train (features computed)", "retrain (features cached)"):
            started = time.perf_counter()
            result = run_job("train", {**params, "out": str(folder / run.split()[0])}, Progress())
            elapsed = time.perf_counter() - started
            timings.append(elapsed)
            print(f"{run}: {elapsed:.2f} s  parts {json.dumps(result['seconds'])}  cache {json.dumps(result['cache'])}"
                  f"  head {result['head']}, epochs run {len(result['losses'])}, mIoU {result['metrics']['miou']}, "
                  f"baseline mIoU {result['baseline']['miou']}")
        print(f"backbone {args.backbone}, {args.threads} threads: first train {timings[0]:.2f} s, "
              f"retrain {timings[1]:.2f} s (target <= 10 s: {'met' if timings[1] <= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
