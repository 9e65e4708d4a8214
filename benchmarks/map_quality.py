"""Map quality on real labelled scenes: do Terrafuse's few-shot heads map better than the classifiers
analysts already have, from the same few labels?

    .venv/bin/python benchmarks/map_quality.py                       # every scene, K = 3, 5, 10, 3 seeds
    .venv/bin/python benchmarks/map_quality.py --scenes s2_delmarva_south --k 5 --seeds 1 --paths rf,satdifuser

The scenes are the folders of ``benchmarks/scenes/`` (image.tif, labels.gpkg, scene.json, LICENSE.md). For
each scene and seed, the labels are split in two by the product's own spatial folds (``split.spatial_folds``
with two folds, blocks of the scene's ``hold_out_block_m``): the first fold's labels are the test labels,
and K labels per class are drawn from the other fold as the training labels. Every path trains on exactly
those training labels and is scored once on the test labels' pixels; nothing is chosen on the test labels
(the few-shot heads' epochs are chosen on inner folds of their training labels, as in the product).

Paths:
- ``rf``: a per-pixel random forest on every band (the product's baseline, as SCP or dzetsaka classify);
- ``linear``: a per-pixel logistic regression on every band, standardised;
- ``band-context``: the band branch of the default heads alone (a logistic regression on every band with its
  local means and spread, :mod:`backend.models.band_context`): what the context adds without a backbone;
- ``satdifuser``: the ``train`` job's defaults (features from the bundled diffusion backbone, its head, the
  band context when on by default); ``satdifuser-paper``: the same without the band context (the paper's head);
  ``satdifuser-inversion``: the default with the features read as the paper reads them (``--inversion paper``:
  the UNet at t on the DDIM-inverted z_t) instead of the fast reuse of the inversion's own calls;
- ``skysense``: the ``train-skysense`` job's defaults on the bundled SkySense, where the model reads the
  scene's sensor; ``skysense-paper``: the same without the band context (the linear head on F_fus alone).

Prints a table (mean ± spread over seeds of mIoU and overall accuracy, with the seconds each path took) and
writes it as JSON with the machine (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.jobs import get as get_job  # noqa: E402
from backend.jobs.info import cpu_name  # noqa: E402
from backend.progress import Progress  # noqa: E402
from backend.training.baseline import random_forest_confusion  # noqa: E402
from backend.training.fewshot import confusion_of, train_on_split  # noqa: E402
from backend.training.loop import predict_cached  # noqa: E402
from backend.training.metrics import confusion_matrix, segmentation_metrics  # noqa: E402
from backend.training.split import spatial_folds  # noqa: E402

SCENES = ROOT / "benchmarks" / "scenes"
PATHS = ("rf", "linear", "band-context", "satdifuser", "satdifuser-paper", "satdifuser-inversion", "skysense",
         "skysense-paper")


@dataclass(frozen=True)
class Scene:
    name: str
    folder: Path
    info: dict[str, Any]

    @property
    def image(self) -> str:
        return str(self.folder / "image.tif")

    @property
    def labels(self) -> str:
        return str(self.folder / "labels.gpkg")

    @property
    def block_m(self) -> float:
        return float(self.info["hold_out_block_m"])


def load_scenes(names: list[str] | None, root: Path = SCENES) -> list[Scene]:
    folders = sorted(p for p in root.iterdir() if (p / "scene.json").is_file())
    scenes = [Scene(p.name, p, json.loads((p / "scene.json").read_text())) for p in folders]
    if names:
        unknown = set(names) - {s.name for s in scenes}
        if unknown:
            raise SystemExit(f"no such scene: {', '.join(sorted(unknown))}")
        scenes = [s for s in scenes if s.name in names]
    return scenes


def job_defaults(job: str, overrides: dict[str, str] | None = None, **values: Any) -> dict[str, Any]:
    """A job's parameters as the command line fills them: its defaults, then ``values``, then those of the
    ``overrides`` (``--set name=value``, read as the command line reads the parameter) that the job has."""
    spec = {p.name: p for p in get_job(job).params}
    params = {name: p.default for name, p in spec.items()}
    params.update(values)
    params.update({name: spec[name].coerce(text) for name, text in (overrides or {}).items() if name in spec})
    return params


def training_draw(labels: Any, block_m: float, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, test) label masks: test is the first of two spatial folds; training is K labels per class
    drawn at random from the other fold (all of them when the fold has fewer)."""
    folds = spatial_folds(labels, block_m, seed, folds=2)
    test = folds.fold == 0
    pool = folds.fold == 1
    rng = np.random.default_rng(1000 + seed)
    training = np.zeros(len(test), dtype=bool)
    for c in range(len(labels.classes)):
        members = np.flatnonzero(pool & (labels.class_index == c))
        training[rng.permutation(members)[:k]] = True
    return training, test


def scores(confusion: np.ndarray, classes: list[dict[str, Any]]) -> dict[str, float]:
    m = segmentation_metrics(confusion, classes)
    return {"miou": float(m["miou"]), "overall_accuracy": float(m["overall_accuracy"])}


def pixels(values: list[np.ndarray], targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([v[:, t >= 0].T for v, t in zip(values, targets)]).astype(np.float32)
    return x, np.concatenate([t[t >= 0] for t in targets])


def band_context_confusion(tiles: Any, train: list[np.ndarray], test: list[np.ndarray], size: int) -> np.ndarray:
    """The band branch alone, fitted as the heads fit it, on the tiles' band context (their last feature)."""
    import torch

    from backend.models.band_context import BandContextBranch, prefit_branch
    from backend.training.loop import class_weights

    contexts = [f[-1] for f in tiles.features]
    branch = BandContextBranch(contexts[0].shape[1], size)
    prefit_branch(branch, contexts, train, class_weights(train, size), torch.device("cpu"))
    with torch.no_grad():
        predictions = [branch(c).argmax(1)[0].numpy() for c in contexts]
    return confusion_of(predictions, test, size)


def linear_confusion(values: list[np.ndarray], train: list[np.ndarray], test: list[np.ndarray], size: int,
                     seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = pixels(values, train)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    model.fit(x, y)
    xt, yt = pixels(values, test)
    return confusion_matrix(yt, model.predict(xt), size)


class FewShotPath:
    """A job's few-shot head on a scene: the job prepares the tiles and features once (every label);
    each draw trains a head on its training labels (its epochs chosen on inner folds of them, as a fold of
    ``train`` does) and scores the test labels."""

    def __init__(self, prepare: Callable[[dict[str, Any], Progress], Any], params: dict[str, Any]) -> None:
        started = time.monotonic()
        self.setup = prepare(params, Progress())
        self.prepare_s = time.monotonic() - started

    def confusion(self, training: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        s = self.setup
        settings = replace(s.settings, seed=seed)
        head, _, _ = train_on_split(s.tiles, ~training, s.new_model, settings, s.device, s.folds.block_m)
        predictions = predict_cached(head, s.tiles.features, s.tiles.image_hw, s.device)
        targets = s.tiles.targets(test, exclude_use=~test)
        return confusion_of(predictions, targets, len(s.classes))


def satdifuser_path(scene: Scene, band_context: bool, cache_dir: str | None, inversion: str = "reuse",
                    overrides: dict[str, str] | None = None) -> FewShotPath:
    from backend.jobs.train import prepare_train

    params = job_defaults("train", overrides, image=scene.image, labels=scene.labels, out="", preview=False,
                          hold_out_block_m=scene.block_m, band_context=band_context, cache_dir=cache_dir,
                          inversion=inversion)
    return FewShotPath(prepare_train, params)


def skysense_inputs(scene: Scene) -> dict[str, Any]:
    """The ``train-skysense`` inputs a user gives for the scene: a multispectral raster as Sentinel-2 with its
    bands mapped by name (Landsat OLI through ``sensors.LANDSAT_OLI_TO_S2``, 0 for a band it lacks: the band
    mask), an RGB or single-band image as the high-resolution input."""
    from backend.models.skysense.config import S2_BANDS
    from backend.raster.sensors import LANDSAT_NAMED, LANDSAT_OLI_TO_S2, NAMED_S2

    names = [b.lower() for b in scene.info["bands"]]
    landsat = "landsat" in scene.info["sensor"].lower()
    if not landsat and "sentinel-2" not in scene.info["sensor"].lower() and "nir" not in names:
        # One band (panchromatic) is read as grey RGB, as a user would map it in the band table.
        return {"hr": scene.image, "hr_bands": "1,1,1"} if len(names) == 1 else {"hr": scene.image}
    table = {k.lower(): v for k, v in (LANDSAT_OLI_TO_S2 if landsat else {}).items()}
    table.update(LANDSAT_NAMED if landsat else NAMED_S2)
    s2_names = [table.get(n) or ("B" + n[1:].lstrip("0").upper() if n.startswith("b") else None) for n in names]
    indices = [s2_names.index(band) + 1 if band in s2_names else 0 for band in S2_BANDS]
    return {"s2": scene.image, "s2_dates": scene.info.get("date") or "2018-06-15",
            "s2_bands": ",".join(str(i) for i in indices)}


def skysense_path(scene: Scene, band_context: bool, cache_dir: str | None,
                  overrides: dict[str, str] | None = None) -> FewShotPath | str:
    """The SkySense path, or why it cannot run on this scene."""
    from backend.errors import UserError
    from backend.jobs.train_skysense import prepare_train_skysense

    params = job_defaults("train-skysense", overrides, labels=scene.labels, out="", hold_out_block_m=scene.block_m,
                          cache_dir=cache_dir, band_context=band_context, **skysense_inputs(scene))
    try:
        return FewShotPath(prepare_train_skysense, params)
    except UserError as exc:
        return str(exc)


def mean_spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def run_scene(scene: Scene, ks: list[int], seeds: int, paths: list[str], cache_dir: str | None,
              report: Callable[[str], None], overrides: dict[str, str] | None = None) -> dict[str, Any]:
    from backend.raster.labels import read_labels

    labels = read_labels(scene.labels)
    few_shot: dict[str, FewShotPath | str] = {}
    if {"satdifuser", "rf", "linear", "band-context"} & set(paths):
        few_shot["satdifuser"] = satdifuser_path(scene, True, cache_dir, overrides=overrides)
    if "satdifuser-paper" in paths:
        few_shot["satdifuser-paper"] = satdifuser_path(scene, False, cache_dir, overrides=overrides)
    if "satdifuser-inversion" in paths:
        few_shot["satdifuser-inversion"] = satdifuser_path(scene, True, cache_dir, "paper", overrides)
    for path, context in (("skysense", True), ("skysense-paper", False)):
        if path in paths:
            few_shot[path] = skysense_path(scene, context, cache_dir, overrides)
    runnable = [r for r in few_shot.values() if isinstance(r, FewShotPath)]
    if not runnable:
        return {"title": scene.info["title"], "cannot_run": {p: r for p, r in few_shot.items()}, "k": {}}
    # The labels as the first runnable path's tiles hold them (the per-pixel baselines read its band values).
    tiles, classes = runnable[0].setup.tiles, runnable[0].setup.classes
    local = tiles.labels
    rows: dict[str, Any] = {}
    for k in ks:
        per_path: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
        seconds: dict[str, float] = {p: 0.0 for p in paths}
        drawn = []
        for seed in range(seeds):
            training, test = training_draw(labels, scene.block_m, seed, k)
            # The labels as the tiles hold them (those on the raster), by feature id.
            index = {fid: i for i, fid in enumerate(labels.ids)}
            pick = np.asarray([index[fid] for fid in local.ids])
            training, test = training[pick], test[pick]
            drawn.append({"training": int(training.sum()), "test": int(test.sum())})
            train_t = tiles.targets(training, exclude_use=~training)
            test_t = tiles.targets(test, exclude_use=~test)
            for path in paths:
                started = time.monotonic()
                if path == "rf":
                    confusion = random_forest_confusion(tiles.band_values, train_t, test_t, len(classes), seed=seed)
                elif path == "linear":
                    confusion = linear_confusion(tiles.band_values, train_t, test_t, len(classes), seed)
                elif path == "band-context":
                    confusion = band_context_confusion(tiles, train_t, test_t, len(classes))
                else:
                    runner = few_shot[path]
                    if isinstance(runner, str):
                        continue
                    confusion = runner.confusion(training, test, seed)
                seconds[path] += time.monotonic() - started
                per_path[path].append(scores(confusion, classes))
                report(f"  {scene.name} K={k} seed {seed} {path}: mIoU {per_path[path][-1]['miou']:.3f}")
        row: dict[str, Any] = {"draws": drawn}
        for path in paths:
            runner = few_shot.get(path)
            if isinstance(runner, str):
                row[path] = {"cannot_run": runner}
                continue
            miou, miou_sd = mean_spread([r["miou"] for r in per_path[path]])
            oa, oa_sd = mean_spread([r["overall_accuracy"] for r in per_path[path]])
            prepare_s = runner.prepare_s if isinstance(runner, FewShotPath) else 0.0
            row[path] = {"miou": miou, "miou_std": miou_sd, "overall_accuracy": oa, "overall_accuracy_std": oa_sd,
                         "seconds_per_draw": seconds[path] / max(1, seeds), "prepare_seconds": prepare_s,
                         "per_seed": per_path[path]}
        rows[str(k)] = row
    return {"title": scene.info["title"], "labels": len(local.ids), "classes": [c["name"] for c in classes],
            "seen_by_bundled_models": scene.info.get("seen_by_bundled_models"), "k": rows}


def table(results: dict[str, Any], paths: list[str]) -> str:
    head = "| scene | K | " + " | ".join(paths) + " |"
    lines = [head, "|" + "---|" * (2 + len(paths))]
    for name, scene in results["scenes"].items():
        for k, row in scene["k"].items():
            cells = []
            for path in paths:
                cell = row.get(path, {})
                if "cannot_run" in cell:
                    cells.append("cannot run")
                elif cell:
                    cells.append(f"{cell['miou']:.2f} ± {cell['miou_std']:.2f} ({cell['overall_accuracy']:.2f})")
                else:
                    cells.append("")
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of other paths on the same scenes, K and seeds as one result (each run keeps its machine and command)."""
    merged: dict[str, Any] = {"runs": [{k: r[k] for k in ("machine", "command", "seconds")} for r in runs],
                              "seeds": runs[0]["seeds"], "scenes": {}, "paths": []}
    for run in runs:
        for name, scene in run["scenes"].items():
            target = merged["scenes"].setdefault(name, {**scene, "k": {}})
            for k, row in scene["k"].items():
                target["k"].setdefault(k, {}).update(row)
        merged["paths"] += [p for p in run.get("paths", PATHS) if p not in merged["paths"]]
    for run in runs:  # a run none of whose paths could run on a scene: its cells say why
        for name, scene in run["scenes"].items():
            for k in merged["scenes"][name]["k"].values():
                k.update({p: {"cannot_run": why} for p, why in scene.get("cannot_run", {}).items()})
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="", help="comma-separated scene folder names (default: all)")
    parser.add_argument("--scenes-dir", type=Path, default=SCENES, help="folder of the scene folders")
    parser.add_argument("--k", default="3,5,10", help="training labels per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: Terrafuse's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the train / train-skysense jobs for every few-shot path (repeatable), "
                             "e.g. inner_folds=1 or grid_gsd_m=0.1")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="print one table of earlier --out files (their paths side by side) and stop")
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge_results([json.loads(p.read_text(encoding="utf-8")) for p in args.merge])
        print(table(merged, [p for p in PATHS if p in merged["paths"]]))
        if args.out:
            Path(args.out).write_text(json.dumps(merged, indent=2), encoding="utf-8")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown path: {', '.join(sorted(unknown))}")
    ks = [int(k) for k in args.k.split(",")]
    overrides = dict(item.split("=", 1) for item in args.set)
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cores": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["benchmarks/map_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "seeds": args.seeds, "paths": paths, "settings": overrides, "scenes": {}}
    for scene in load_scenes([s for s in args.scenes.split(",") if s], args.scenes_dir):
        print(f"{scene.name}: {scene.info['title']}", flush=True)
        results["scenes"][scene.name] = run_scene(scene, ks, args.seeds, paths, args.cache_dir,
                                                  lambda m: print(m, flush=True), overrides)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(table(results, paths))
    print(f"cells: mIoU mean ± spread over {args.seeds} seeds (overall accuracy); {results['seconds']} s in all")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
