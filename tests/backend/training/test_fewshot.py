"""The one few-shot trainer cannot flatter: a fold's head never depends on the classes of the labels it is
scored on, and labels drawn independently of the image score at chance level, for both models."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.jobs.train_skysense import HeadOnFeatures
from backend.models.band_context import BandContextConfig, band_context
from backend.models.segmenter import SatDiFuser
from backend.models.skysense.heads import PixelClassifier
from backend.progress import Progress
from backend.raster.labels import LabelSet, labels_on_raster, read_labels
from backend.training.fewshot import (
    LabelTiles,
    PackedPixels,
    _mean_curve,
    choose_epochs,
    cross_validate,
    train_on_split,
)
from backend.training.loop import TrainingSettings
from backend.training.samples import label_tiles
from backend.training.split import spatial_folds
from backend.worker import run_job
from tests.backend.synthetic_features import random_features, tiny_feature_info
from tests.backend.test_train_segment import pixel_box, write_labels
from tests.conftest import ROOT, SAMPLE_SCENE

CLASSES = ("water", "land")
SETTINGS = TrainingSettings(epochs=8, patience=2, batch_size=2, seed=3, inner_folds=2)
CPU = torch.device("cpu")
BUNDLED_SKYSENSE = ROOT / "resources" / "models" / "terrafuse-tiny-skysense"
SAMPLE_LABELS = ROOT / "resources" / "sample" / "sentinel2_coast_labels.gpkg"


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
        head, _, choice = train_on_split(tiles, held, new_head_for(model, classes), SETTINGS, CPU, folds.block_m)
        assert choice.inner_folds == 2  # the epochs were chosen, on two inner folds
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


def test_curves_of_runs_that_stopped_early_keep_their_last_loss() -> None:
    np.testing.assert_allclose(_mean_curve([[3.0, 2.0, 1.0], [4.0, 3.0]]), [3.5, 2.5, 2.0])


def test_inner_folds_choose_the_epochs_and_no_label_outside_the_training_ones_does(tmp_path: Path) -> None:
    labels = read_labels(str(random_squares(tmp_path / "labels.gpkg", 24, seed=1)))
    classes = [c.to_json() for c in labels.classes]
    folds = spatial_folds(labels, 500.0, seed=0)
    training = ~folds.held_out(0, labels.ids)

    def choice(class_index: np.ndarray, inner_folds: int = 2):
        relabelled = LabelSet(labels.geometries, class_index, labels.classes, labels.crs, labels.ids)
        return choose_epochs(synthetic_tiles(relabelled, "satdifuser"), training, new_head_for("satdifuser", classes),
                             replace(SETTINGS, inner_folds=inner_folds), CPU, folds.block_m)

    reference = choice(labels.class_index)
    assert reference.inner_folds == 2
    assert not reference.starts_at_zero  # the paper's head: at least one epoch
    mean = np.asarray(reference.mean_curve)
    assert reference.epochs == 1 + int(np.flatnonzero(mean <= mean.min() + SETTINGS.min_delta)[0])
    assert choice(labels.class_index, inner_folds=1).inner_folds == 1
    flipped_outside = labels.class_index.copy()
    flipped_outside[~training] = 1 - flipped_outside[~training]
    assert choice(flipped_outside) == reference
    flipped_inside = labels.class_index.copy()
    flipped_inside[training] = 1 - flipped_inside[training]
    assert choice(flipped_inside).mean_curve != reference.mean_curve  # the test can fail


def test_too_few_labels_for_inner_folds_run_the_whole_schedule(tmp_path: Path) -> None:
    squares = [("water", pixel_box(10, 10, 18, 18)), ("land", pixel_box(100, 100, 108, 108)),
               ("water", pixel_box(150, 20, 158, 28)), ("land", pixel_box(20, 150, 28, 158))]
    labels = read_labels(str(write_labels(tmp_path / "labels.gpkg", squares)))
    classes = [c.to_json() for c in labels.classes]
    training = np.asarray([True, True, False, False])  # one label per class: nothing to hold out inside
    chosen = choose_epochs(synthetic_tiles(labels, "satdifuser"), training, new_head_for("satdifuser", classes),
                           SETTINGS, CPU, 500.0)
    assert (chosen.epochs, chosen.inner_folds) == (SETTINGS.epochs, 0)


def test_the_band_branch_alone_is_chosen_when_the_head_only_spoils_it() -> None:
    """On the sample's real labels, with noise for backbone features and a learning rate that wrecks any head,
    the inner folds keep the prefitted branch alone (0 epochs), and the fold's head is that branch."""
    labels = read_labels(str(SAMPLE_LABELS))
    classes = [c.to_json() for c in labels.classes]
    tiles = synthetic_tiles(labels, "satdifuser")
    bands = tuple(range(1, tiles.samples[0].band_values.shape[0] + 1))
    config = BandContextConfig(bands, (0.0,) * len(bands), (3000.0,) * len(bands))
    for sample in tiles.samples:
        scaled = np.clip(sample.band_values / 3000.0, 0, 1) * 2 - 1
        sample.features.append(band_context(torch.from_numpy(scaled.astype(np.float32))[None]))

    def new_head() -> SatDiFuser:
        return SatDiFuser.create(tiny_feature_info(), classes, "global", "pixel", fusion_kwargs={"out_chs": 8},
                                 band_context=config)

    folds = spatial_folds(labels, 1000.0, seed=0)
    settings = replace(SETTINGS, learning_rate=50.0, warmup_epochs=0)
    head, history, chosen = train_on_split(tiles, folds.held_out(0, labels.ids), new_head, settings, CPU,
                                           folds.block_m)
    assert chosen.starts_at_zero
    assert chosen.inner_folds >= 1
    assert chosen.epochs == 0
    assert history.losses == []
    features = tiles.features[0]
    with torch.no_grad():
        torch.testing.assert_close(head.decode(features, tiles.image_hw[0]), head.band_branch(features[-1]))


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
