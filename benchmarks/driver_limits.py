"""What one driver can move, whatever the cluster behind it: reading the input, writing the outputs, and
building the class polygons, each measured alone on this machine (docs/scaling.md, "Driver limits").

- reading: a tiled 3-band uint8 GeoTIFF read in 256 px windows (the tiles' reads), in Mpx/s;
- writing: the class raster (uint8) and the confidence (float32) written in 256 px windows with the
  engine's writers (deflate, tiled), in Mpx/s;
- polygons: a speckled class map (square patches of random classes, a few px each, as a noisy model
  gives) through the strip polygoniser and the GeoPackage writer, as the segment job reads its class
  raster back, in polygons/s; run at each size, so that the time against the area shows how it grows.

    .venv/bin/python benchmarks/driver_limits.py [--sizes-px 1000,2000] [--patch-px 20] [--strip-rows 512]

Keep runs short on a shared machine: 2000 px (4 Mpx) takes a few seconds per stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.raster.polygons import PolygonLayerWriter, StripPolygonizer  # noqa: E402
from backend.raster.writers import open_class_raster, open_score_raster  # noqa: E402

WINDOW_PX = 256
CLASSES = [{"id": i, "name": f"class {i}", "colour": "#" + f"{40 * i:02x}" * 3} for i in range(5)]
TRANSFORM = from_origin(500000.0, 5000000.0, 1.0, 1.0)
CRS = "EPSG:32632"


def speckled_classes(size_px: int, patch_px: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Patches of ``patch_px`` px of 5 random classes, ``noise`` of the pixels flipped: many small regions."""
    rng = np.random.default_rng(seed)
    cells = -(-size_px // patch_px)
    classes = rng.integers(0, 5, (cells, cells)).repeat(patch_px, 0).repeat(patch_px, 1)[:size_px, :size_px]
    flip = rng.random(classes.shape) < noise
    classes[flip] = rng.integers(0, 5, int(flip.sum()))
    return classes.astype(np.uint8)


def windows(size_px: int) -> list[Window]:
    return [Window(c, r, min(WINDOW_PX, size_px - c), min(WINDOW_PX, size_px - r))
            for r in range(0, size_px, WINDOW_PX) for c in range(0, size_px, WINDOW_PX)]


def measure_reading(folder: Path, size_px: int) -> float:
    path = folder / "image.tif"
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", driver="GTiff", width=size_px, height=size_px, count=3, dtype="uint8",
                       tiled=True, blockxsize=WINDOW_PX, blockysize=WINDOW_PX, compress="deflate",
                       transform=TRANSFORM, crs=CRS) as dst:
        for window in windows(size_px):
            dst.write(rng.integers(0, 256, (3, window.height, window.width), dtype=np.uint8), window=window)
    started = time.perf_counter()
    with rasterio.open(path) as src:
        for window in windows(size_px):
            src.read(window=window)
    return size_px * size_px / (time.perf_counter() - started) / 1e6


def measure_writing(folder: Path, size_px: int, classes: np.ndarray) -> float:
    confidence = np.random.default_rng(2).random(classes.shape, dtype=np.float32)
    started = time.perf_counter()
    with open_class_raster(folder / "classes.tif", size_px, size_px, TRANSFORM, CRS, CLASSES, {}) as dst, \
            open_score_raster(folder / "confidence.tif", size_px, size_px, TRANSFORM, CRS, "confidence", {}) as score:
        for window in windows(size_px):
            rows = slice(window.row_off, window.row_off + window.height)
            cols = slice(window.col_off, window.col_off + window.width)
            dst.write(classes[rows, cols], 1, window=window)
            score.write(confidence[rows, cols], 1, window=window)
    return size_px * size_px / (time.perf_counter() - started) / 1e6


def measure_polygons(folder: Path, size_px: int, classes: np.ndarray, strip_rows: int) -> tuple[int, float]:
    confidence = np.random.default_rng(3).random(classes.shape, dtype=np.float32)
    started = time.perf_counter()
    writer = PolygonLayerWriter(folder / f"classes-{size_px}.gpkg", rasterio.crs.CRS.from_string(CRS), TRANSFORM,
                                CLASSES, {})
    polygonizer = StripPolygonizer(TRANSFORM, size_px)
    for row in range(0, size_px, strip_rows):
        writer.add(polygonizer.add_strip(classes[row:row + strip_rows], confidence[row:row + strip_rows], row))
    writer.add(polygonizer.finish())
    writer.close()
    return writer.count, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-px", default="1000,2000", help="square sizes, comma-separated")
    parser.add_argument("--patch-px", type=int, default=20, help="speckle patch size")
    parser.add_argument("--noise", type=float, default=0.0, help="share of pixels given a random class")
    parser.add_argument("--strip-rows", type=int, default=512, help="rows per polygon strip")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_px.split(",")]
    with tempfile.TemporaryDirectory(prefix="tf-driver-") as tmp:  # imports and first calls, not measured
        measure_polygons(Path(tmp), 64, speckled_classes(64, 8), 32)
    print(f"{'size px':>8} {'Mpx':>6} {'read Mpx/s':>11} {'write Mpx/s':>12} {'polygons':>9} {'poly s':>7} "
          f"{'polygons/s':>11} {'s per Mpx':>10}")
    for size_px in sizes:
        with tempfile.TemporaryDirectory(prefix="tf-driver-") as tmp:
            folder = Path(tmp)
            classes = speckled_classes(size_px, args.patch_px, args.noise)
            read = measure_reading(folder, size_px)
            write = measure_writing(folder, size_px, classes)
            count, seconds = measure_polygons(folder, size_px, classes, args.strip_rows)
        mpx = size_px * size_px / 1e6
        print(f"{size_px:>8} {mpx:>6.2f} {read:>11.1f} {write:>12.1f} {count:>9} {seconds:>7.2f} "
              f"{count / seconds:>11.0f} {seconds / mpx:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
