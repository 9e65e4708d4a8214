"""Segmentation throughput on a Ray cluster against the number of actors, and what it projects to.

A SatDiFuser head (random weights, global fusion, pixel head) on the bundled backbone ``terrafuse-tiny``
runs over the same random tile batches: in this process (``LocalPredictor``, the single-machine path)
with ``--threads`` torch threads, then through ``RayPredictor`` with 1, 2, ... actors of ``--threads``
threads each on a local Ray (or the cluster at ``--cluster``). Model loading is left out (warm-up batches
first); each figure is tiles/s over ``--batches`` batches, the median of ``--repeats``. "vs in-process" is
Ray's tiles/s over the in-process tiles/s at the same threads per model: one actor shows the cost of the
distribution itself (transfers, scheduling, ordering), n actors its scaling; "scaling efficiency" is
tiles/s with n actors / (n x tiles/s with one actor). On this machine n actors need n x threads CPUs.

The projection turns a per-GPU rate into km2 per hour: one tile adds (tile_px - overlap_px)^2 pixels of
new area, tiles on the chunk borders are predicted once per chunk they touch (the overhead factor is
counted with the engine's own tiling of a 20 x 20 km area), and N GPUs give N x efficiency x the rate
(efficiency: the lowest scaling efficiency measured, at most 1; one GPU: 1).

    .venv/bin/python benchmarks/cluster_scaling.py                         # 1 and 2 actors, 64 px tiles
    .venv/bin/python benchmarks/cluster_scaling.py --actors 1,2,4 --tile-px 128 --cluster auto \\
        --gpu-tiles-per-s 12.5 --gpus 1,8,64                               # a per-GPU figure to project

The machine's load average is printed with the figures: on a shared machine they are only as good as the
load was low.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.inference.cluster import RayPredictor, RaySession  # noqa: E402
from backend.inference.predictor import LocalPredictor, TilePredictor  # noqa: E402
from backend.inference.tile_model import TileModelSpec, load_tile_model  # noqa: E402

CLASSES = [{"id": i + 1, "name": name, "colour": colour} for i, (name, colour) in
           enumerate([("water", "#1f78b4"), ("trees", "#33a02c"), ("field", "#ffff99"), ("urban", "#e31a1c")])]


def write_head(folder: Path, backbone_name: str, tile_px: int, timesteps: tuple[int, ...]) -> Path:
    """A random head on ``backbone_name``, saved as ``segment`` loads it."""
    import torch

    from backend.models.cache import BACKBONES
    from backend.models.diffusion import DiffusionFeatureExtractor
    from backend.models.segmenter import SatDiFuser

    backbone = BACKBONES.get(backbone_name, "cpu")
    extractor = DiffusionFeatureExtractor(backbone, timesteps=timesteps)
    torch.manual_seed(0)
    model = SatDiFuser.create(
        extractor.feature_info, CLASSES, "global", "pixel",
        backbone={"name": backbone.name, "source": backbone_name, "sha256": backbone.sha256},
        timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
        bands=[1, 2, 3], band_low=[0.0] * 3, band_high=[255.0] * 3, tile_px=tile_px)
    return model.save_pretrained(folder / "head")


def tiles_per_s(predictor: TilePredictor, batches: list[np.ndarray], repeats: int, warm_up: int) -> float:
    """Median tiles/s of ``predictor.map`` over ``batches`` (after ``warm_up`` batches)."""
    list(predictor.map(batches[:warm_up]))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in predictor.map(batches):
            pass
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - started))
    return statistics.median(rates)


def chunk_overhead(tile_px: int, overlap_px: int, chunk_px: int, side_px: int = 20_000) -> float:
    """Tile predictions per tile of a ``side_px`` square area cut into ``chunk_px`` chunks (>= 1)."""
    from rasterio.windows import Window

    from backend.raster.chunks import chunk_windows, tiles_touching
    from backend.raster.tiles import tile_windows

    window = Window(0, 0, side_px, side_px)
    tiles = tile_windows(window, tile_px, overlap_px, (side_px, side_px))
    predicted = sum(len(tiles_touching(tiles, chunk)) for chunk in chunk_windows(window, chunk_px))
    return predicted / len(tiles)


def km2_per_hour(rate_per_gpu: float, gpus: int, efficiency: float, tile_px: int, overlap_px: int, gsd_m: float,
                 overhead: float) -> float:
    """Area mapped per hour: new area per tile x tiles/s x GPUs x efficiency / chunk-border overhead."""
    new_area_km2 = ((tile_px - overlap_px) * gsd_m) ** 2 / 1e6
    return rate_per_gpu * gpus * efficiency / overhead * new_area_km2 * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="local", help="Ray address, or local (default)")
    parser.add_argument("--actors", default="1,2", help="actor counts to time (default 1,2)")
    parser.add_argument("--backbone", default="terrafuse-tiny")
    parser.add_argument("--tile-px", type=int, default=64)
    parser.add_argument("--timesteps", default="1,100,200")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overlap-px", type=int, default=None, help="default: a quarter tile, as segment")
    parser.add_argument("--gsd-m", type=float, default=1.0)
    parser.add_argument("--projection-tile-px", type=int, default=512, help="tile size of the projection")
    parser.add_argument("--gpu-tiles-per-s", type=float, default=None,
                        help="measured per-GPU tiles/s (benchmarks/throughput.py) to project; default: none")
    parser.add_argument("--gpus", default="1,2,4,8,16,64")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    from backend.jobs.segment import CHUNK_PX

    os.environ.setdefault("TERRAFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="tf-cluster-bench-cache-"))
    timesteps = tuple(int(t) for t in args.timesteps.split(","))
    counts = [int(n) for n in args.actors.split(",")]
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (args.batch_size, 3, args.tile_px, args.tile_px)).astype(np.float32)
               for _ in range(args.batches)]
    figures: dict[str, Any] = {"tile_px": args.tile_px, "batch_size": args.batch_size, "batches": args.batches,
                               "timesteps": list(timesteps), "backbone": args.backbone, "cpus": os.cpu_count(),
                               "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="tf-cluster-bench-") as folder:
        head = write_head(Path(folder), args.backbone, args.tile_px, timesteps)
        spec = TileModelSpec("segment", {"model": str(head), "backbone": args.backbone})
        import torch

        torch.set_num_threads(args.threads)
        local = LocalPredictor(load_tile_model(spec, "cpu"))
        figures["in_process"] = tiles_per_s(local, batches, args.repeats, warm_up=1)
        local.close()
        session = RaySession.open(args.cluster)
        try:
            import ray

            figures["cluster"] = {"address": args.cluster, "resources": ray.cluster_resources()}
            figures["actors"] = {}
            for count in counts:
                predictor = RayPredictor(spec, args.cluster, actors=count, threads=args.threads)
                try:
                    rate = tiles_per_s(predictor, batches, args.repeats, warm_up=2 * count)
                finally:
                    predictor.close()
                figures["actors"][count] = {"tiles_per_s": rate, "device": predictor.provenance["device"]}
        finally:
            session.close()
    one = figures["actors"].get(1, {}).get("tiles_per_s")
    for count, entry in figures["actors"].items():
        entry["vs_in_process"] = entry["tiles_per_s"] / figures["in_process"]
        entry["efficiency"] = entry["tiles_per_s"] / (count * one) if one else None
    figures["load_after"] = os.getloadavg()

    overlap_px = args.overlap_px if args.overlap_px is not None else args.projection_tile_px // 4
    overhead = chunk_overhead(args.projection_tile_px, overlap_px, CHUNK_PX)
    efficiency = min([1.0] + [e["efficiency"] for n, e in figures["actors"].items() if n > 1 and e["efficiency"]])
    figures["projection"] = {"tile_px": args.projection_tile_px, "overlap_px": overlap_px, "gsd_m": args.gsd_m,
                             "chunk_px": CHUNK_PX, "chunk_overhead": overhead, "efficiency": efficiency,
                             "gpu_tiles_per_s": args.gpu_tiles_per_s}

    print(f"Segmentation throughput, {args.backbone} backbone, {args.tile_px} px tiles, timesteps "
          f"{args.timesteps}, {args.batch_size} tiles per batch, {args.batches} batches, median of {args.repeats}")
    print(f"load average before {figures['load_before'][0]:.2f}, after {figures['load_after'][0]:.2f}; "
          f"{os.cpu_count()} CPUs")
    print()
    print("| runs on | tiles/s | vs in-process | scaling efficiency |")
    print("|---|---:|---:|---:|")
    print(f"| this process ({args.threads} thread{'s' if args.threads > 1 else ''}) | {figures['in_process']:.2f} "
          "| 1.00 | |")
    for count, entry in figures["actors"].items():
        scaling = f"{entry['efficiency']:.2f}" if entry["efficiency"] is not None else ""
        print(f"| Ray, {count} actor{'s' if count > 1 else ''} ({entry['device']}) | {entry['tiles_per_s']:.2f} | "
              f"{entry['vs_in_process']:.2f} | {scaling} |")
    print()
    print(f"Projection: {args.projection_tile_px} px tiles, {overlap_px} px overlap, {args.gsd_m:g} m gsd, "
          f"{CHUNK_PX} px chunks (x{overhead:.3f} tile predictions), scaling efficiency {efficiency:.2f}")
    if args.gpu_tiles_per_s:
        print("| GPUs | km2/hour |")
        print("|---:|---:|")
        for gpus in (int(g) for g in args.gpus.split(",")):
            area = km2_per_hour(args.gpu_tiles_per_s, gpus, efficiency if gpus > 1 else 1.0,
                                args.projection_tile_px, overlap_px, args.gsd_m, overhead)
            print(f"| {gpus} | {area:,.0f} |")
    else:
        per_tile = km2_per_hour(1.0, 1, 1.0, args.projection_tile_px, overlap_px, args.gsd_m, overhead)
        print(f"km2/hour = {per_tile:.4f} x (per-GPU tiles/s) x GPUs x {efficiency:.2f} (beyond one GPU); pass "
              "--gpu-tiles-per-s with a measured per-GPU rate (benchmarks/throughput.py) for a table")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
