"""The one few-shot trainer cannot flatter: a fold's head never depends on the classes of the labels it is
scored on, and labels drawn independently of the image score at chance level, for both models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.jobs.train_skysense import HeadOnFeatures
from backend.models.segmenter import SatDiFuser
from backend.models.skysense.heads import PixelClassifier
from backend.progress import Progress
from backend.raster.labels import LabelSet, labels_on_raster, read_labels
from backend.training.fewshot import LabelTiles, PackedPixels, cross_validate, train_on_split
from backend.training.loop import TrainingSettings
from backend.training.samples import label_tiles
from backend.training.split import spatial_folds
from backend.worker import run_job
from tests.backend.synthetic_features import random_features, tiny_feature_info
from tests.backend.test_train_segment import pixel_box, write_labels
from tests.conftest import ROOT, SAMPLE_SCENE

CLASSES = ("water", "land")
SETTINGS = TrainingSettings(epochs=8, patience=2, batch_size=2, seed=3)
CPU = torch.device("cpu")
BUNDLED_SKYSENSE = ROOT / "resources" / "models" / "terrafuse-tiny-skysense"


def random_squares(path: Path, count: int, seed: int, side_px: int = 8, region_px: int = 192) -> Path:
    """``count`` squares at random places of the sample scene's north-west ``region_px`` square, with random
    classes: labels that say nothing about the image, half of each class."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, region_px - side_px, size=(count, 2))
    classes = rng.permutation([CLASSES[i % 2] for i in range(count)])
    return write_labels(path, [(c, pixel_box(x, y, x + side_px, y + side_px)) for c, (x, y) in zip(classes, corners)])


def synthetic_tiles(labels: LabelSet, model: str, tile_px: int = 64) -> LabelTiles | PackedPixels:
    """Label tiles of the sample scene with random features shaped as the model's: SatDiFuser's pyramid of
    a tiny UNet, or SkySense's F_fus at the tiles' resolution (packed per pixel, as train-skysense does)."""
    with rasterio.open(SAMPLE_SCENE) as src:
        local, area, _ = labels_on_raster(labels, src)
        samples = label_tiles(src, local, area, tile_px, (3, 2, 1))
        transform = src.transform
    generator = torch.Generator().manual_seed(0)
    for i, sample in enumerate(samples):
        if model == "satdifuser":
            sample.features = random_features(tiny_feature_info(), (tile_px, tile_px), batch=1, seed=i)
        else:
            sample.features = [torch.randn(1, 8, tile_px, tile_px, generator=generator)]
    tiles = LabelTiles(samples, local, transform)
    return tiles if model == "satdifuser" else PackedPixels(tiles, row_px=512)


def new_head_for(model: str, classes: list[dict]):
    if model == "satdifuser":
        return lambda: SatDiFuser.create(tiny_feature_info(), classes, "global", "pixel", fusion_kwargs={"out_chs": 8})
    return lambda: HeadOnFeatures(PixelClassifier(8, len(classes)))


@pytest.mark.parametrize("model", ["satdifuser", "skysense"])
def test_a_fold_head_is_bit_identical_whatever_the_classes_of_its_held_out_labels(tmp_path: Path,
                                                                                  model: str) -> None:
    labels = read_labels(str(random_squares(tmp_path / "labels.gpkg", 24, seed=1)))
    classes = [c.to_json() for c in labels.classes]
    folds = spatial_folds(labels, 500.0, seed=0)
    held = folds.held_out(0, labels.ids)
    assert held.any()
    assert not held.all()

    def head_state(class_index: np.ndarray) -> dict[str, torch.Tensor]:
        relabelled = LabelSet(labels.geometries, class_index, labels.classes, labels.crs, labels.ids)
        tiles = synthetic_tiles(relabelled, model)
        head, history = train_on_split(tiles, held, new_head_for(model, classes), SETTINGS, CPU, folds.block_m)
        assert history.stopping_losses  # the epoch was chosen, on the inner split
        return {k: v.clone() for k, v in head.state_dict().items()}

    reference = head_state(labels.class_index)
    flipped_held_out = labels.class_index.copy()
    flipped_held_out[held] = 1 - flipped_held_out[held]
    same = head_state(flipped_held_out)
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    # The test can fail: flipping the classes of training labels does change the head.
    flipped_training = labels.class_index.copy()
    flipped_training[~held] = 1 - flipped_training[~held]
    other = head_state(flipped_training)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


@pytest.mark.parametrize("model", ["satdifuser", "skysense"])
def test_random_labels_on_random_features_report_chance(tmp_path: Path, model: str) -> None:
    """Over several draws of labels that carry no signal, the cross-validated accuracy is 1/2 within three
    standard errors of the number of held-out labels."""
    count, draws = 30, 3
    accuracies = []
    for seed in range(draws):
        squares = random_squares(tmp_path / f"labels{seed}.gpkg", count, seed=10 + seed, side_px=4, region_px=96)
        labels = read_labels(str(squares))
        classes = [c.to_json() for c in labels.classes]
        folds = spatial_folds(labels, 150.0, seed=seed)
        result = cross_validate(synthetic_tiles(labels, model, tile_px=32), folds, classes,
                                new_head_for(model, classes), SETTINGS, CPU, baseline=False)
        assert result.metrics["held_out_labels"] == count
        accuracies.append(result.metrics["overall_accuracy"])
    tolerance = 3 * math.sqrt(0.25 / count) / math.sqrt(draws)
    assert abs(np.mean(accuracies) - 0.5) <= tolerance, accuracies


def _chance_tolerance(held_out_labels: int, draws: int) -> float:
    return 3 * math.sqrt(0.25 / held_out_labels) / math.sqrt(draws)


@pytest.mark.slow
def test_random_labels_on_the_bundled_models_report_chance(tmp_path: Path) -> None:
    """The same with the real jobs, the bundled backbones and the real scene (both models, same folds)."""
    count, draws = 30, 3
    accuracies: dict[str, list[float]] = {"train": [], "train-skysense": []}
    for seed in range(draws):
        labels = str(random_squares(tmp_path / f"labels{seed}.gpkg", count, seed=20 + seed, region_px=640))
        common = {"labels": labels, "epochs": 10, "seed": seed, "hold_out_block_m": 300.0, "baseline": False}
        sd = run_job("train", {**common, "image": str(SAMPLE_SCENE), "out": str(tmp_path / f"sd{seed}"),
                               "preview": False, "tile_px": 128, "timesteps": "1,100"}, Progress())
        sky = run_job("train-skysense", {**common, "model": str(BUNDLED_SKYSENSE), "s2": str(SAMPLE_SCENE),
                                         "s2_dates": "2018-06-15", "out": str(tmp_path / f"sky{seed}")}, Progress())
        assert sd["validation"]["fold_of_label"] == sky["validation"]["fold_of_label"]  # the same labels held out
        for job, result in (("train", sd), ("train-skysense", sky)):
            accuracies[job].append(result["metrics"]["overall_accuracy"])
    for job, values in accuracies.items():
        assert abs(np.mean(values) - 0.5) <= _chance_tolerance(count, draws), (job, values)
