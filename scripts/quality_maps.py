"""A benchmark scene mapped from the same few labels by the random forest and by Terrafuse's default head,
side by side (``docs/images/quality_map_<scene>.png``).

    .venv/bin/python scripts/quality_maps.py --scene rgbn_river_town --k 5 --seed 0

The training labels are the benchmark's draw for that scene, K and seed (``benchmarks/map_quality.py``:
K labels per class from the training fold); the held-out labels are outlined in white on every panel. The
random forest is the product's baseline on every band (``training/baseline.py``'s settings); Terrafuse's map
is ``train`` (its defaults: the bundled backbone, the band context) then ``segment`` over the whole scene,
both run through the command line as a user runs them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.raster.labels import NO_LABEL, rasterize_features, read_labels  # noqa: E402
from backend.training.baseline import N_ESTIMATORS  # noqa: E402
from benchmarks.map_quality import load_scenes, training_draw  # noqa: E402


def stretch(rgb: np.ndarray) -> np.ndarray:
    low, high = np.percentile(rgb, [2, 98], axis=(1, 2), keepdims=True)
    return (np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def colour(classes: list, index: np.ndarray) -> np.ndarray:
    palette = np.array([[int(c.colour[i:i + 2], 16) for i in (1, 3, 5)] for c in classes], dtype=np.uint8)
    return palette[np.clip(index, 0, len(classes) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="rgbn_river_town")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from sklearn.ensemble import RandomForestClassifier

    scene = load_scenes([args.scene])[0]
    labels = read_labels(scene.labels)
    training, test = training_draw(labels, scene.block_m, args.seed, args.k)
    with tempfile.TemporaryDirectory() as tmp, rasterio.open(scene.image) as src:
        work = Path(tmp)
        subset = labels.subset(training)
        subset_path = work / "training.gpkg"
        _write_labels(subset, subset_path)
        python = str(ROOT / ".venv" / "bin" / "python")
        # The user's commands, without a shell.
        subprocess.run([python, "-m", "backend", "train", "--image", scene.image, "--labels",  # nosec B603
                        str(subset_path), "--out", str(work / "head"), "--no-preview"], check=True)
        subprocess.run([python, "-m", "backend", "segment", "--image", scene.image, "--model",  # nosec B603
                        str(work / "head"), "--out", str(work / "map"), "--no-polygons"], check=True)
        with rasterio.open(work / "map" / "classes.tif") as classes_src:
            class_ids = classes_src.read(1)
        values = src.read().astype(np.float32)
        window = rasterio.windows.Window(0, 0, src.width, src.height)
        train_px = rasterize_features(subset, window, src.transform)
        test_px = rasterize_features(labels.subset(test), window, src.transform)
        rgb_bands = scene.info["rgb_bands"]
        rgb = stretch(values[[b - 1 for b in rgb_bands]] if len(rgb_bands) == 3 else values[[0, 0, 0]])
    ids = [int(c.id) for c in labels.classes]
    terrafuse = np.vectorize(lambda v: ids.index(v) if v in ids else 0)(class_ids)
    x = values.reshape(len(values), -1).T
    keep = train_px.ravel() != NO_LABEL
    forest = RandomForestClassifier(N_ESTIMATORS, class_weight="balanced", random_state=args.seed, n_jobs=2)
    forest.fit(x[keep], subset.class_index[train_px.ravel()[keep]])
    rf = forest.predict(x).reshape(train_px.shape)
    held = test_px != NO_LABEL
    truth = labels.subset(test).class_index[test_px[held]]
    panels = [("image, training labels (filled), held-out (outlined)", rgb.copy()),
              (f"random forest: {np.mean(rf[held] == truth):.0%} of held-out pixels", colour(labels.classes, rf)),
              (f"Terrafuse default: {np.mean(terrafuse[held] == truth):.0%}", colour(labels.classes, terrafuse))]
    panels[0][1][train_px != NO_LABEL] = colour(labels.classes, subset.class_index[train_px[train_px != NO_LABEL]])
    from scipy.ndimage import binary_dilation, binary_erosion

    edge = binary_dilation(held & ~binary_erosion(held))  # the held-out labels' outlines, two pixels wide
    height, width = rgb.shape[:2]
    canvas = Image.new("RGB", (3 * width + 40, height + 30), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, pixels) in enumerate(panels):
        pixels = pixels.copy()
        pixels[edge] = 255
        canvas.paste(Image.fromarray(pixels), (10 + i * (width + 10), 25))
        draw.text((10 + i * (width + 10), 6), title, fill="black")
    out = args.out or ROOT / "docs" / "images" / f"quality_map_{scene.name}.png"
    canvas.save(out, optimize=True)
    print(out)
    return 0


def _write_labels(labels, path: Path) -> None:
    """``labels`` as a labels GeoPackage in the plugin's layout (the sample's writer)."""
    import shapely

    from scripts.make_sample_labels import write_label_layers

    classes = tuple((int(c.id), c.name, c.colour) for c in labels.classes)
    picked = [labels.classes[k] for k in labels.class_index]
    write_label_layers(path, [shapely.geometry.shape(g) for g in labels.geometries],
                       np.array([c.id for c in picked], dtype=np.int32),
                       np.array([c.name for c in picked], dtype=object),
                       np.array([c.colour for c in picked], dtype=object), classes, labels.crs.to_string())


if __name__ == "__main__":
    raise SystemExit(main())
