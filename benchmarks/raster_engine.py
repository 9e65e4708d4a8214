"""Peak memory and time of the segment job over 1, 4 and 16 km2 at 1 m with a tiny model on the CPU.

The raster engine streams: blended scores are kept for one strip of rows of one output chunk (at
most ``CHUNK_PX`` wide) and finished windows go straight to disk, so peak RSS should stay flat as the
area grows (issue 4: under 2 GB at 16 km2). Each size runs in its own process, which reports its peak
RSS (VmHWM) after loading the model ("model MB": torch, the backbone) and after the job ("peak MB").
``--chunk-px`` sets the chunk size (default: the engine's); "held px" is the width of scores held.

    .venv/bin/python benchmarks/raster_engine.py [--sizes-km2 1,4,16] [--tile-px 256] [--chunk-px 1024]
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from backend.jobs import segment
from backend.inference import tile_model
from backend.progress import Progress
from backend.worker import run_job

def peak_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

params, chunk_px = json.loads(sys.argv[1]), int(sys.argv[2])
if chunk_px:
    segment.CHUNK_PX = chunk_px
model_mb = []
load = tile_model.load_segmenter
def load_and_measure(*args):
    loaded = load(*args)
    model_mb.append(peak_mb())
    return loaded
tile_model.load_segmenter = load_and_measure
started = time.monotonic()
result = run_job("segment", params, Progress())
seconds = time.monotonic() - started
print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak_mb(), "model_rss_mb": model_mb[0],
                   "tiles": result["tiles"], "predictions": result["tile_predictions"],
                   "chunks": result["chunks"], "chunk_px": segment.CHUNK_PX,
                   "held_px": min(segment.CHUNK_PX, result["width"]), "polygons": result["polygons"],
                   "width": result["width"], "height": result["height"]}}))
"""


def write_scene(path: Path, side_px: int) -> Path:
    """A 3-band uint8 tiled GeoTIFF of ``side_px`` square at 1 m (UTM 33N), written by blocks."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side_px, "height": side_px, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000.0, 5000000.0, 1.0, 1.0), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    rows = np.arange(256)[:, None]
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side_px, 256):
            height = min(256, side_px - row)
            # Broad bands of "land cover" with noise: regions for the polygons, texture for the model.
            base = ((row + rows[:height]) // 97 % 3 * 80 + np.arange(side_px)[None] // 131 % 2 * 40)
            noise = rng.integers(0, 30, (3, height, side_px))
            dst.write((base[None] + noise).astype(np.uint8), window=Window(0, row, side_px, height))
    return path


def make_head(folder: Path, tile_px: int) -> Path:
    """A tiny random backbone (diffusers classes, as the tests build it) and a random head on it."""
    import torch

    from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
    from backend.models.segmenter import SatDiFuser
    from tests.backend.conftest import write_tiny_backbone

    backbone_dir = write_tiny_backbone(folder / "backbone")
    backbone = load_backbone(backbone_dir)
    extractor = DiffusionFeatureExtractor(backbone, timesteps=(1,))
    torch.manual_seed(0)
    classes = [{"id": i + 1, "name": name, "colour": colour} for i, (name, colour) in
               enumerate([("water", "#1f78b4"), ("trees", "#33a02c"), ("field", "#ffff99"), ("urban", "#e31a1c")])]
    model = SatDiFuser.create(
        extractor.feature_info, classes, "global", "pixel", fusion_kwargs={"out_chs": 16},
        backbone={"name": backbone.name, "source": str(backbone_dir.resolve()), "sha256": backbone.sha256},
        timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
        bands=[1, 2, 3], band_low=[0.0] * 3, band_high=[255.0] * 3, tile_px=tile_px)
    return model.save_pretrained(folder / "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-km2", default="1,4,16")
    parser.add_argument("--tile-px", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk-px", type=int, default=0, help="output chunk size (default: the engine's)")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes_km2.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="terrafuse-bench-") as tmp:
        folder = Path(tmp)
        head = make_head(folder, args.tile_px)
        for km2 in sizes:
            side_px = round((km2 * 1e6) ** 0.5)
            scene = write_scene(folder / f"scene_{km2:g}km2.tif", side_px)
            params = {"image": str(scene), "model": str(head), "out": str(folder / f"out_{km2:g}"),
                      "batch_size": args.batch_size}
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), json.dumps(params),
                                   str(args.chunk_px)],
                                  capture_output=True, text=True, check=False, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"segment failed at {km2:g} km2:\n{done.stderr[-3000:]}")
            stats = json.loads(done.stdout.strip().splitlines()[-1])
            stats.update(km2=km2, side_px=side_px, process_s=time.monotonic() - started)
            rows.append(stats)
            print(f"  {km2:g} km2 done in {stats['seconds']:.1f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'area km2':>8} {'pixels':>11} {'chunks':>6} {'chunk px':>8} {'held px':>7} {'tiles':>6} "
          f"{'predicted':>9} {'polygons':>8} {'job s':>7} {'px/s':>7} {'model MB':>8} {'peak MB':>7}")
    for r in rows:
        print(f"{r['km2']:>8g} {r['side_px']:>5}x{r['side_px']:<5} {r['chunks']:>6} {r['chunk_px']:>8} "
              f"{r['held_px']:>7} {r['tiles']:>6} {r['predictions']:>9} {r['polygons']:>8} {r['seconds']:>7.1f} "
              f"{r['side_px'] ** 2 / r['seconds']:>7.0f} {r['model_rss_mb']:>8.0f} {r['peak_rss_mb']:>7.0f}")


if __name__ == "__main__":
    main()
