"""The ``train-skysense`` job: a SkySense classifier head trained on drawn labels (flow 2 on flow 3's inputs).

It shares the few-shot machinery of :mod:`backend.training` rather than copying it: the fused per-pixel
features F_fus (eq. 3) of each grid tile under the labels are cached on disk (:class:`FeatureCache`, keyed by
the inputs, the grid, the model's weights and the normalisation), whole labels are held out in spatial
blocks (:func:`spatial_hold_out`), the head trains in the shared loop (AdamW, warm-up and cosine decay,
class-balanced loss, early stop on the held-out loss; :func:`train_decoder`), and it is scored with the
shared metrics next to the per-pixel random-forest baseline on every band of every date.

The head is the linear :class:`PixelClassifier` over F_fus; the whole model (encoders, fusion, prototypes,
head, the band normalisation it was trained with) is saved as a SkySense folder that ``classify`` and
``prototypes`` take as their model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from .errors import UserError
from .models.skysense import SkySense
from .progress import Progress
from .raster.band_check import modality_band_statistics
from .raster.labels import NO_LABEL, LabelSet, labels_on_raster, rasterize_features, read_labels
from .raster.stack import InputStack
from .skysense_jobs import LoadedModel, load_model, prepare_stack
from .training.feature_cache import FeatureCache, raster_identity, tile_key
from .training.loop import TrainingSettings, predict_cached, train_decoder
from .training.metrics import hold_out_metrics
from .training.samples import TileSample, check_labels, check_training_pixels, spatial_hold_out

#: Fewer labels than this in all cannot be split into training and validation.
MIN_LABELS = 2
#: Spatial blocks of the hold-out, in tiles: labels within one block are held out together.
HOLD_OUT_BLOCK_TILES = 2


class HeadOnFeatures(nn.Module):
    """The SkySense head in the form the shared loop trains: ``decode(features, hw)`` -> logits, where
    ``features`` is a tile's cached feature list (one level: F_fus, (B, 2d, h, w))."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def decode(self, features: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        logits = self.head(features[0])
        if tuple(logits.shape[-2:]) != tuple(image_hw):
            logits = F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
        return logits

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


def label_samples(stack: InputStack, model: SkySense, labels: LabelSet, held_out: np.ndarray, area: Window,
                  cache: FeatureCache, identity: dict[str, Any], feature_config: dict[str, Any],
                  progress: Progress, total: int) -> tuple[list[TileSample], int]:
    """The grid tiles holding labelled valid cells, with their F_fus from the cache or the model (then
    cached); returns the samples and how many tiles were computed."""
    training = labels.subset(~held_out)
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
        train_cover = rasterize_features(training, window, grid.transform) != NO_LABEL
        samples.append(TileSample(window, None, cell_valid, feature_px, train_cover,
                                  cell_band_values(inputs, stack), features))
    cache.flush()
    if not samples:
        raise UserError("Every labelled cell is nodata in the inputs; draw labels over valid pixels")
    return samples, computed


def run_train_skysense(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train a SkySense head on the labels and save the model with it (see the module's docstring)."""
    from .training.baseline import random_forest_baseline

    started_s = time.monotonic()
    seed = int(params.get("seed") or 0)
    settings = TrainingSettings(epochs=int(params["epochs"]), learning_rate=float(params["learning_rate"]),
                                batch_size=int(params["batch_size"]), patience=int(params["patience"]), seed=seed)
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError("epochs and batch_size must be at least 1")
    progress.update(0, 1, "reading the labels")
    labels = read_labels(params["labels"])
    check_labels(labels, MIN_LABELS)
    loaded = load_model(params["model"], seed)
    model = loaded.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    stack, modalities, _ = prepare_stack(params, model)
    with stack:
        grid = stack.grid
        local, area, outside = labels_on_raster(labels, grid)
        check_labels(local, MIN_LABELS)
        block_px = HOLD_OUT_BLOCK_TILES * stack.tile_px
        hold_out = spatial_hold_out(local, grid.transform, block_px, float(params["validation_fraction"]), seed)
        normalisation = {n: s.normalisation.to_json() for n, s in stack.modalities.items() if s.normalisation}
        identity = {"inputs": [{"modality": m.name, "dates": m.describe()["dates"], "bands": list(m.bands),
                                "rasters": [raster_identity(p) for p in m.paths]} for m in modalities],
                    "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                             "tile_px": stack.tile_px}}
        feature_config = {"model": "skysense", "weights": weights_identity(loaded, seed),
                          "normalisation": normalisation}
        cache = FeatureCache(params.get("cache_dir"), max_bytes=int(params["cache_max_mb"]) * 1024**2)
        windows = label_windows(area, stack.tile_px)
        total = len(windows) + settings.epochs + 3
        samples, computed = label_samples(stack, model, local, hold_out.held_out, area, cache, identity,
                                          feature_config, progress, total)
    features_s = time.monotonic() - started_s
    train_targets = [s.targets(local, ~hold_out.held_out) for s in samples]
    val_targets = [s.targets(local, hold_out.held_out, exclude_training=True) for s in samples]
    train_px = check_training_pixels(local, train_targets)
    class_dicts = [c.to_json() for c in local.classes]
    names = [c.name for c in local.classes]

    torch.manual_seed(seed)  # the same initial head whether the features were cached or computed
    head = model.attach_head(class_dicts)
    trainer = HeadOnFeatures(head)
    features = [s.features for s in samples]

    def on_epoch(epoch: int, loss: float) -> None:
        progress.update(len(windows) + epoch + 1, total, f"epoch {epoch + 1} of {settings.epochs}, loss {loss:.4f}")

    history = train_decoder(trainer, features, train_targets, settings, device, on_epoch,
                            validation_targets=val_targets if hold_out.held_out.any() else None)
    progress.update(total - 3, total, "validating")
    hw = (stack.tile_px, stack.tile_px)
    predictions = predict_cached(trainer, features, [hw] * len(samples), device)

    message = hold_out.message(names)
    metrics = hold_out_metrics(predictions, train_targets, val_targets, class_dicts, hold_out)
    baseline: dict[str, Any] | None = None
    if params.get("baseline"):
        progress.update(total - 2, total, "baseline: random forest on every band of every date")
        baseline = random_forest_baseline([s.band_values for s in samples], train_targets, val_targets, class_dicts,
                                          hold_out.validated, message, seed=seed)
    model.config.normalisation = normalisation
    model.config.training = {
        "modalities": [m.name for m in modalities], "inputs": {m.name: m.describe() for m in modalities},
        "labels": str(Path(params["labels"]).resolve()), "base_model": loaded.name,
        "base_checkpoint_sha256": loaded.checkpoint_sha256, "grid_gsd_m": grid.gsd_m, "tile_px": stack.tile_px,
        "epochs": settings.epochs, "epochs_run": len(history.losses), "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early, "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size, "validation_fraction": params["validation_fraction"],
        "hold_out_block_px": block_px, "training_px": train_px.tolist(), "seed": seed,
        "metrics": metrics, "baseline": baseline,
    }
    model.config.training["band_statistics"] = modality_band_statistics(modalities)
    progress.update(total - 1, total, "saving the model with its head")
    folder = model.save_pretrained(params["out"])
    progress.update(total, total, "done")
    return {
        "model": str(Path(folder).resolve()), "classes": class_dicts, "metrics": metrics, "baseline": baseline,
        "cache": {"tiles_total": len(samples), "tiles_computed": computed, "tiles_cached": len(samples) - computed,
                  "folder": str(cache.folder)},
        "tiles": len(samples), "tile_px": stack.tile_px, "labels_outside": outside, "losses": history.losses,
        "validation_losses": history.validation_losses, "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early, "device": str(device), "warnings": list(loaded.warnings),
        "seconds": {"features": round(features_s, 2), "total": round(time.monotonic() - started_s, 2)},
    }
