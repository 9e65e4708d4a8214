"""The ``train-skysense`` job: a SkySense classifier head trained on drawn labels (flow 2 on flow 3's inputs).

Only the features are SkySense's own: the fused per-pixel features F_fus (eq. 3) of each grid tile under the
labels, cached on disk (:class:`FeatureCache`, keyed by the inputs, the grid, the model's weights and the
normalisation). Everything else is the one few-shot trainer of :mod:`.fewshot` that SatDiFuser's ``train``
uses too: the same spatial folds in map units (so both models hold out the same labels), the same loop
with its epochs chosen on inner folds of the training labels, the same metrics and the random-forest
baseline on the same folds (here on every band of every date).

The head is the linear :class:`PixelClassifier` over F_fus; the whole model (encoders, fusion, prototypes,
head, the band normalisation it was trained with) is saved as a SkySense folder that ``classify`` and
``prototypes`` take as their model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from ..errors import UserError
from ..models.band_context import DEFAULT_SPREAD_PX, DEFAULT_WINDOWS_PX, BandContextBranch, prefit_branch
from ..models.skysense import SkySense
from ..models.skysense.loading import LoadedModel, load_model
from ..models.skysense.model import cell_band_context
from ..progress import Progress
from ..raster.band_check import modality_band_statistics
from ..raster.labels import NO_LABEL, LabelSet, labels_on_raster, rasterize_features, read_labels
from ..raster.stack import InputStack
from ..training.feature_cache import FeatureCache, raster_identity, tile_key
from ..training.fewshot import FewShotSetup, LabelTiles, PackedPixels, cross_validate, epoch_progress, training_runs
from ..training.loop import TrainingSettings
from ..training.samples import TileSample, check_labels, check_training_pixels
from ..training.split import check_block_m, spatial_folds
from .skysense import prepare_stack

#: Fewer labels than this in all cannot be split into training and validation.
MIN_LABELS = 2


class HeadOnFeatures(nn.Module):
    """The SkySense head in the form the shared loop trains: ``decode(features, hw)`` -> logits, where
    ``features`` is a tile's feature list: F_fus (B, 2d, h, w) from the cache, then, for a head with a band
    branch, the cells' band context (:func:`..models.skysense.model.cell_band_context`)."""

    def __init__(self, head: nn.Module, band_branch: BandContextBranch | None = None) -> None:
        super().__init__()
        self.head = head
        self.band_branch = band_branch

    def decode(self, features: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        logits = self.head(features[0])
        if self.band_branch is not None:
            logits = logits + self.band_branch(features[1])
        if tuple(logits.shape[-2:]) != tuple(image_hw):
            logits = F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
        return logits

    def prefit(self, features: Sequence[Sequence[Tensor]], targets: Sequence[Any], class_weight: Tensor) -> bool:
        """Fit the band branch on the labelled cells before the loop (as :meth:`SatDiFuser.prefit`)."""
        if self.band_branch is None:
            return False
        return prefit_branch(self.band_branch, [tile[1] for tile in features], targets, class_weight,
                             next(self.head.parameters()).device)

    def auxiliary_loss(self) -> Tensor | None:
        return None


def weights_identity(loaded: LoadedModel, seed: int) -> str:
    """What the features depend on in the model: the checkpoint's sha256 (a folder) or the configuration
    and the seed its random weights were drawn with (a name); the head and its classes are left out."""
    if loaded.checkpoint_sha256:
        return loaded.checkpoint_sha256
    config = loaded.model.config.to_json()
    for key in ("classes", "normalisation", "training", "description"):
        config.pop(key, None)
    payload = json.dumps({"config": config, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def label_windows(area: Window, tile_px: int) -> list[Window]:
    """The tiles of the stack's grid (anchored at its origin, ``tile_px`` apart) that meet ``area``."""
    rows = range(int(area.row_off) // tile_px, math.ceil((area.row_off + area.height) / tile_px))
    cols = range(int(area.col_off) // tile_px, math.ceil((area.col_off + area.width) / tile_px))
    return [Window(c * tile_px, r * tile_px, tile_px, tile_px) for r in rows for c in cols]


def cell_band_values(inputs: dict[str, Any], stack: InputStack) -> np.ndarray:
    """Every band of every date on the grid's cells, (bands, tile, tile): what the per-pixel baseline reads
    (the high-resolution image averaged over each cell)."""
    planes = []
    for name, modality in stack.modalities.items():
        values = inputs[name][0].numpy()
        if not modality.inputs.temporal:
            f = modality.factor
            c, h, w = values.shape
            values = values.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))
        else:
            values = values.reshape(-1, *values.shape[-2:])
        planes.append(values)
    return np.concatenate(planes).astype(np.float32)


def label_samples(stack: InputStack, model: SkySense, labels: LabelSet, area: Window, cache: FeatureCache,
                  identity: dict[str, Any], feature_config: dict[str, Any], progress: Progress,
                  total: int, context_modalities: list[str] | None = None,
                  context_channels: dict[str, int] | None = None,
                  cell_spread: list[str] | None = None) -> tuple[list[TileSample], int]:
    """The grid tiles holding labelled valid cells, with their F_fus from the cache or the model (then
    cached), followed by the cells' band context of ``context_modalities`` when given (cheap: never
    cached; the bands of each modality go into ``context_channels``, and the modalities finer than the
    grid, whose spread within a cell is read too, into ``cell_spread``); returns the samples and how many
    tiles were computed."""
    context_channels = {} if context_channels is None else context_channels
    cell_spread = [] if cell_spread is None else cell_spread
    device = next(model.parameters()).device
    grid = stack.grid
    samples: list[TileSample] = []
    computed = 0
    windows = label_windows(area, stack.tile_px)
    for i, window in enumerate(windows):
        progress.update(i, total, f"SkySense features, tile {i + 1} of {len(windows)}")
        feature_px = rasterize_features(labels, window, grid.transform)
        if not (feature_px != NO_LABEL).any():
            continue
        inputs, valid = stack.read_batch([window])
        cell_valid = valid[0]
        cell_valid[grid.height - int(window.row_off):, :] = False  # the padding beyond the grid
        cell_valid[:, grid.width - int(window.col_off):] = False
        if not ((feature_px != NO_LABEL) & cell_valid).any():
            continue
        key = tile_key(identity, window, feature_config)
        features = cache.get(key)
        if features is None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with torch.inference_mode():
                fused = model(batch, grid_hw=(stack.tile_px, stack.tile_px))["features"]
            cache.put(key, [fused])
            features = [fused.to(torch.float16).to(torch.float32).cpu()]  # as a cache hit reads them
            computed += 1
        if context_modalities:
            if not context_channels:
                context_channels.update({m: int(inputs[m].shape[-3]) for m in context_modalities})
                cell_spread.extend(m for m in context_modalities
                                   if tuple(inputs[m].shape[-2:]) != (stack.tile_px, stack.tile_px))
            features = [*features, cell_band_context(inputs, context_modalities, (stack.tile_px, stack.tile_px),
                                                     cell_spread=cell_spread)]
        samples.append(TileSample(window, None, cell_valid, feature_px, cell_band_values(inputs, stack), features))
    cache.flush()
    if not samples:
        raise UserError("Every labelled cell is nodata in the inputs; draw labels over valid pixels")
    return samples, computed


@dataclass
class SkySenseTrainingSetup(FewShotSetup):
    """What ``train-skysense`` hands the few-shot trainer, and what its result reports."""

    loaded: LoadedModel
    modalities: list[Any]
    normalisation: dict[str, Any]
    grid_gsd_m: float
    tile_px: int
    train_px: np.ndarray
    windows: int
    computed: int
    samples: int
    cache_folder: str
    outside: Any
    features_s: float
    band_warnings: list[str]


def prepare_train_skysense(params: dict[str, Any], progress: Progress) -> SkySenseTrainingSetup:
    """Everything of ``train-skysense`` before the trainer: labels, folds, the model, the input stack, the
    F_fus of the labelled tiles (cached), packed per labelled cell."""
    started_s = time.monotonic()
    seed = int(params.get("seed") or 0)
    settings = TrainingSettings(epochs=int(params["epochs"]), learning_rate=float(params["learning_rate"]),
                                batch_size=int(params["batch_size"]), patience=int(params["patience"]), seed=seed,
                                inner_folds=int(params.get("inner_folds", 1)))
    if settings.epochs < 1 or settings.batch_size < 1 or settings.inner_folds < 1:
        raise UserError("epochs, batch_size and inner_folds must be at least 1")
    progress.update(0, 1, "reading the labels")
    labels = read_labels(params["labels"])
    check_labels(labels, MIN_LABELS)
    folds = spatial_folds(labels, check_block_m(float(params["hold_out_block_m"])), seed, int(params["folds"]))
    loaded = load_model(params["model"], seed)
    model = loaded.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    stack, modalities, _ = prepare_stack(params, model)
    with stack:
        grid = stack.grid
        local, area, outside = labels_on_raster(labels, grid)
        check_labels(local, MIN_LABELS)
        normalisation = {n: s.normalisation.to_json() for n, s in stack.modalities.items() if s.normalisation}
        identity = {"inputs": [{"modality": m.name, "dates": m.describe()["dates"], "bands": list(m.bands),
                                "rasters": [raster_identity(p) for p in m.paths]} for m in modalities],
                    "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                             "tile_px": stack.tile_px}}
        feature_config = {"model": "skysense", "weights": weights_identity(loaded, seed),
                          "normalisation": normalisation}
        cache = FeatureCache(params.get("cache_dir"), max_bytes=int(params["cache_max_mb"]) * 1024**2)
        windows = label_windows(area, stack.tile_px)
        total = len(windows) + training_runs(folds, settings) * settings.epochs + 3
        band_warnings = stack.band_warnings
        context_modalities = [m.name for m in modalities] if params.get("band_context", True) else None
        context_channels: dict[str, int] = {}
        cell_spread: list[str] = []
        samples, computed = label_samples(stack, model, local, area, cache, identity, feature_config, progress,
                                          total, context_modalities, context_channels, cell_spread)
    context: dict[str, Any] | None = None
    if context_modalities:
        context = {"modalities": context_modalities, "modality_channels": context_channels,
                   "windows_px": list(DEFAULT_WINDOWS_PX), "spread_px": DEFAULT_SPREAD_PX, "cell_spread": cell_spread}
    # The head is linear per cell: trained on the labelled cells alone, it is the same head, many times faster.
    tiles = PackedPixels(LabelTiles(samples, local, grid.transform))
    train_px = check_training_pixels(local, tiles.targets(np.ones(len(local.geometries), dtype=bool)))
    class_dicts = [c.to_json() for c in local.classes]

    def new_head() -> HeadOnFeatures:
        head = model.attach_head(class_dicts, context)  # the last one made, the final head, stays on
        return HeadOnFeatures(head, model.band_branch)

    return SkySenseTrainingSetup(tiles, folds, class_dicts, new_head, settings, device, loaded, modalities,
                                 normalisation, grid.gsd_m, stack.tile_px, train_px, len(windows), computed,
                                 len(samples), str(cache.folder), outside, time.monotonic() - started_s,
                                 list(band_warnings))


def run_train_skysense(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train a SkySense head on the labels and save the model with it (see the module's docstring)."""
    started_s = time.monotonic()
    setup = prepare_train_skysense(params, progress)
    settings, folds, modalities, loaded = setup.settings, setup.folds, setup.modalities, setup.loaded
    model = loaded.model
    total = setup.windows + training_runs(folds, settings) * settings.epochs + 3
    trained = cross_validate(setup.tiles, folds, setup.classes, setup.new_model, settings, setup.device,
                             bool(params.get("baseline")),
                             epoch_progress(progress, setup.windows, total, settings.epochs))
    history, metrics, baseline = trained.history, trained.metrics, trained.baseline
    model.config.normalisation = setup.normalisation
    model.config.training = {
        "modalities": [m.name for m in modalities], "inputs": {m.name: m.describe() for m in modalities},
        "labels": str(Path(params["labels"]).resolve()), "base_model": loaded.name,
        "base_checkpoint_sha256": loaded.checkpoint_sha256, "grid_gsd_m": setup.grid_gsd_m,
        "tile_px": setup.tile_px, "epochs": settings.epochs, "epochs_run": len(history.losses),
        "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
        "validation": trained.validation, "training_px": setup.train_px.tolist(), "seed": settings.seed,
        "metrics": metrics, "baseline": baseline, "comparison": trained.comparison,
    }
    model.config.training["band_statistics"] = modality_band_statistics(modalities)
    progress.update(total - 1, total, "saving the model with its head")
    folder = model.save_pretrained(params["out"])
    progress.update(total, total, f"done. {trained.verdict()}")
    return {
        "model": str(Path(folder).resolve()), "classes": setup.classes, "metrics": metrics, "baseline": baseline,
        "band_context": model.band_branch is not None,
        "comparison": trained.comparison, "validation": trained.validation,
        "cache": {"tiles_total": setup.samples, "tiles_computed": setup.computed,
                  "tiles_cached": setup.samples - setup.computed, "folder": setup.cache_folder},
        "tiles": setup.samples, "tile_px": setup.tile_px, "labels_outside": setup.outside,
        "losses": history.losses, "device": str(setup.device), "warnings": list(loaded.warnings) + setup.band_warnings,
        "seconds": {"features": round(setup.features_s, 2), "total": round(time.monotonic() - started_s, 2)},
    }
