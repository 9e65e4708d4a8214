"""The ``train`` job: a fusion and a light head trained on the labelled pixels of a labels layer.

Backbone features of each tile around the labels are computed once and cached in memory for all
epochs; whole label features are held out for validation (spatial hold-out).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..progress import Progress
from ..raster.bands import parse_bands, percentile_normalisation
from ..raster.inspect import open_raster
from ..raster.labels import labels_on_raster, read_labels
from .loop import TrainingSettings, predict_cached, train_decoder
from .metrics import confusion_matrix, segmentation_metrics
from .samples import check_training_pixels, hold_out_features, label_tiles

#: The smallest tile the UNet takes: 8 latent pixels times 3 downsamplings (64 px for Stable Diffusion).
MIN_TILE_PX = 64
FEATURE_CACHE_DTYPE = torch.float16  # halves the cache; features are read back as float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_timesteps(text: str) -> tuple[int, ...]:
    try:
        timesteps = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"Timesteps must be integers separated by commas, like 1,100,200; got {text!r}") from None
    if not timesteps:
        raise UserError("Give at least one timestep, like 1,100,200")
    return timesteps


def backbone_source(text: str) -> str:
    """What the head records to find its backbone again: an absolute path for a folder or archive."""
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def run_train(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from ..models.diffusion import DiffusionFeatureExtractor, load_backbone
    from ..models.diffusion.registry import resolve_config
    from ..models.segmenter import SatDiFuser

    started_s = time.monotonic()
    settings = TrainingSettings(epochs=params["epochs"], learning_rate=params["learning_rate"],
                                batch_size=params["batch_size"], seed=params["seed"])
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError("epochs and batch_size must be at least 1")
    timesteps = parse_timesteps(params["timesteps"])
    progress.update(0, 1, "reading the labels")
    labels = read_labels(params["labels"])
    if len(labels.classes) < 2:
        raise UserError(f"Training needs labels of at least two classes; the labels layer has only "
                        f"'{labels.classes[0].name}'. Draw labels of another class")
    device = default_device()
    with open_raster(params["image"]) as src:
        local, area, outside = labels_on_raster(labels, src)
        bands = parse_bands(params["bands"], src)
        tile_px = int(params["tile_px"] or resolve_config(params["backbone"]).tile_px)
        if tile_px < MIN_TILE_PX:
            raise UserError(f"tile_px must be at least {MIN_TILE_PX}; got {tile_px}")
        samples = label_tiles(src, local, area, tile_px, bands)
    held_out = hold_out_features(local, params["validation_fraction"], params["seed"])
    train_targets = [s.targets(local, ~held_out) for s in samples]
    val_targets = [s.targets(local, held_out) for s in samples]
    train_px = check_training_pixels(local, train_targets)
    normalisation = percentile_normalisation([(s.raw, s.valid) for s in samples], bands, params["seed"])
    # The backbone loads last: every mistake in the labels is reported before a multi-gigabyte load.
    progress.update(0, 1, "loading the backbone")
    backbone = load_backbone(params["backbone"], device)

    extractor = DiffusionFeatureExtractor(backbone, timesteps=timesteps)
    total = len(samples) + settings.epochs + 2
    for i, sample in enumerate(samples):
        progress.update(i, total, f"backbone features, tile {i + 1} of {len(samples)}")
        image = normalisation.apply(sample.raw)
        image[:, ~sample.valid] = 0.0
        with torch.inference_mode():
            features = extractor(torch.from_numpy(image)[None])
        sample.features = [f.to(FEATURE_CACHE_DTYPE).cpu() for f in features]
        sample.raw = None
    features_s = time.monotonic() - started_s

    model = SatDiFuser.create(
        extractor.feature_info, [c.to_json() for c in local.classes], params["fusion"], params["head"],
        fusion_kwargs={"out_chs": params["fusion_chs"]},
        backbone={"name": backbone.name, "source": backbone_source(params["backbone"]), "sha256": backbone.sha256},
        timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
        bands=list(normalisation.bands), band_low=list(normalisation.low), band_high=list(normalisation.high),
        tile_px=tile_px,
    )

    def on_epoch(epoch: int, loss: float) -> None:
        progress.update(len(samples) + epoch + 1, total, f"epoch {epoch + 1} of {settings.epochs}, loss {loss:.4f}")

    losses = train_decoder(model, [s.features for s in samples], train_targets, settings, device, on_epoch)
    training_s = time.monotonic() - started_s - features_s

    progress.update(total - 2, total, "validating")
    predictions = predict_cached(model, [s.features for s in samples],
                                 [(int(s.window.height), int(s.window.width)) for s in samples], device)
    names = [c.name for c in local.classes]

    def metrics_of(targets: list[np.ndarray]) -> dict[str, Any]:
        confusion = sum(confusion_matrix(t, p, len(names)) for t, p in zip(targets, predictions))
        return segmentation_metrics(confusion, names)

    metrics: dict[str, Any] = {
        "validation": metrics_of(val_targets) if held_out.any() else None,
        "training": metrics_of(train_targets),
        "validation_features": int(held_out.sum()),
        "training_features": int((~held_out).sum()),
    }
    if not held_out.any():
        metrics["note"] = ("no validation: no class has two labelled features to hold one out; "
                           "the metrics are on the training pixels")
    model.config.metrics = metrics
    model.config.training = {
        "epochs": settings.epochs, "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
        "final_loss": losses[-1], "tiles": len(samples), "image": str(Path(params["image"]).resolve()),
        "labels": str(Path(params["labels"]).resolve()), "training_px": train_px.tolist(),
    }
    progress.update(total - 1, total, "saving the head")
    folder = model.save_pretrained(params["out"])
    progress.update(total, total, "done")
    return {
        "model": str(folder),
        "classes": model.config.classes,
        "metrics": metrics,
        "tiles": len(samples),
        "tile_px": tile_px,
        "labels_outside_raster": outside,
        "losses": losses,
        "device": str(device),
        "seconds": {"features": round(features_s, 2), "training": round(training_s, 2),
                    "total": round(time.monotonic() - started_s, 2)},
    }
