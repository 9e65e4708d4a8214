"""The ``train`` job: a fusion and a head trained on the labelled pixels of a labels layer.

Backbone features of each grid tile under the labels come from the on-disk feature cache (see
:mod:`.feature_cache`) or are computed once and stored there, so retraining after a new label computes
only the new label's tiles. Whole labels are held out in spatial blocks for validation (see
:func:`.samples.spatial_hold_out`); a per-pixel random forest is scored on the same pixels as a baseline;
after saving, an optional preview maps the area with its uncertainty.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..progress import Progress
from ..raster.band_check import band_statistics
from ..raster.bands import parse_bands
from ..raster.inspect import open_raster
from ..raster.labels import labels_on_raster, read_labels
from .feature_cache import FeatureCache, raster_identity, tile_key
from .loop import TrainingSettings, predict_cached, train_decoder
from .metrics import hold_out_metrics
from .samples import (
    check_labels,
    check_training_pixels,
    label_tiles,
    raster_normalisation,
    spatial_hold_out,
)

#: The smallest tile the UNet takes: 8 latent pixels times 3 downsamplings (64 px for Stable Diffusion).
MIN_TILE_PX = 64
#: Fewer labels than this in all cannot be split into training and validation.
MIN_LABELS = 2
#: head "auto": UPerNet once the training labels cover this many pixels (four fully labelled 256 px tiles);
#: below, its pyramid pooling and FPN (a few hundred thousand weights) overfit, and the light per-pixel head
#: generalises better from a few polygons.
UPERNET_MIN_LABELLED_PX = 4 * 256 * 256
#: Spatial blocks of the hold-out, in tiles: labels within one block are held out together.
HOLD_OUT_BLOCK_TILES = 2
NORMALISATION_NOTE = "per-band 2nd-98th percentile over the whole raster (decimated read), scaled to [-1, 1]"


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


def choose_head(head: str, training_px: int) -> str:
    """The head to train: as asked, or for "auto" UPerNet when the labels cover enough pixels."""
    if head != "auto":
        return head
    return "upernet" if training_px >= UPERNET_MIN_LABELLED_PX else "pixel"


def tile_features(samples: list[Any], keys: list[str], cache: FeatureCache, extractor: Any, normalisation: Any,
                  progress: Progress, total: int) -> int:
    """Fill each sample's features from the cache or the extractor (then cached); returns how many tiles
    were computed."""
    computed = 0
    for i, (sample, key) in enumerate(zip(samples, keys)):
        cached = cache.get(key)
        if cached is not None:
            sample.features = cached
            continue
        progress.update(i, total, f"backbone features, tile {i + 1} of {len(samples)}")
        image = normalisation.apply(sample.raw)
        image[:, ~sample.valid] = 0.0
        with torch.inference_mode():
            features = extractor(torch.from_numpy(image)[None])
        cache.put(key, features)
        sample.features = [f.to(torch.float16).to(torch.float32) for f in features]  # as a cache hit reads them
        computed += 1
    cache.flush()
    for sample in samples:
        sample.raw = None
    return computed


def run_train(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from ..models.cache import BACKBONES
    from ..models.diffusion import DiffusionFeatureExtractor
    from ..models.diffusion.registry import resolve_config
    from ..models.segmenter import SatDiFuser
    from .baseline import random_forest_baseline

    started_s = time.monotonic()
    settings = TrainingSettings(epochs=params["epochs"], learning_rate=params["learning_rate"],
                                batch_size=params["batch_size"], patience=params["patience"], seed=params["seed"])
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError("epochs and batch_size must be at least 1")
    if params["cache_max_mb"] < 0:
        raise UserError("cache_max_mb must be 0 or more")
    timesteps = parse_timesteps(params["timesteps"])
    progress.update(0, 1, "reading the labels")
    labels = read_labels(params["labels"])
    check_labels(labels, MIN_LABELS)
    device = default_device()
    with open_raster(params["image"]) as src:
        local, area, outside = labels_on_raster(labels, src)
        check_labels(local, MIN_LABELS)
        bands = parse_bands(params["bands"], src)
        tile_px = int(params["tile_px"] or resolve_config(params["backbone"]).tile_px)
        if tile_px < MIN_TILE_PX:
            raise UserError(f"tile_px must be at least {MIN_TILE_PX}; got {tile_px}")
        hold_out = spatial_hold_out(local, src.transform, HOLD_OUT_BLOCK_TILES * tile_px,
                                    params["validation_fraction"], params["seed"])
        samples = label_tiles(src, local, hold_out.held_out, area, tile_px, bands)
        normalisation = raster_normalisation(src, bands, params["seed"])
        raster_crs, raster_transform, raster_hw = src.crs, src.transform, (src.height, src.width)
    train_targets = [s.targets(local, ~hold_out.held_out) for s in samples]
    val_targets = [s.targets(local, hold_out.held_out, exclude_training=True) for s in samples]
    train_px = check_training_pixels(local, train_targets)
    class_dicts = [c.to_json() for c in local.classes]
    names = [c.name for c in local.classes]
    # The backbone loads last: every mistake in the labels is reported before a multi-gigabyte load.
    progress.update(0, 1, "loading the backbone")
    backbone = BACKBONES.get(params["backbone"], device)  # kept loaded between jobs of the worker
    extractor = DiffusionFeatureExtractor(backbone, timesteps=timesteps)

    cache = FeatureCache(params["cache_dir"], max_bytes=params["cache_max_mb"] * 1024**2)
    raster = raster_identity(params["image"])
    feature_config = {"backbone_sha256": backbone.sha256, "timesteps": list(extractor.timesteps),
                      "blocks": list(extractor.blocks), "levels": list(extractor.levels),
                      "bands": list(normalisation.bands), "band_low": list(normalisation.low),
                      "band_high": list(normalisation.high)}
    keys = [tile_key(raster, s.window, feature_config) for s in samples]
    total = len(samples) + settings.epochs + 3
    computed = tile_features(samples, keys, cache, extractor, normalisation, progress, total)
    features_s = time.monotonic() - started_s

    head = choose_head(params["head"], int(train_px.sum()))
    torch.manual_seed(params["seed"])  # the same initial weights whether the features were cached or computed
    model = SatDiFuser.create(
        extractor.feature_info, class_dicts, params["fusion"], head,
        fusion_kwargs={"out_chs": params["fusion_chs"]},
        backbone={"name": backbone.name, "source": backbone_source(params["backbone"]), "sha256": backbone.sha256},
        timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
        bands=list(normalisation.bands), band_low=list(normalisation.low), band_high=list(normalisation.high),
        normalisation=NORMALISATION_NOTE, tile_px=tile_px,
    )

    def on_epoch(epoch: int, loss: float) -> None:
        progress.update(len(samples) + epoch + 1, total, f"epoch {epoch + 1} of {settings.epochs}, loss {loss:.4f}")

    features = [s.features for s in samples]
    history = train_decoder(model, features, train_targets, settings, device, on_epoch,
                            validation_targets=val_targets if hold_out.held_out.any() else None)
    training_s = time.monotonic() - started_s - features_s

    progress.update(total - 3, total, "validating")
    predictions = predict_cached(model, features, [(int(s.window.height), int(s.window.width)) for s in samples],
                                 device)

    message = hold_out.message(names)
    metrics = hold_out_metrics(predictions, train_targets, val_targets, class_dicts, hold_out)
    baseline: dict[str, Any] | None = None
    if params["baseline"]:
        progress.update(total - 2, total, "baseline: random forest on band values")
        baseline = random_forest_baseline([s.band_values for s in samples], train_targets, val_targets, class_dicts,
                                          hold_out.validated, message, seed=params["seed"])
    cache_info = {"tiles_total": len(samples), "tiles_computed": computed, "tiles_cached": len(samples) - computed,
                  "folder": str(cache.folder), "bytes": cache.total_bytes, "evicted": cache.evicted}
    model.config.metrics = {**metrics, "baseline": baseline}
    model.config.training = {
        "epochs": settings.epochs, "epochs_run": len(history.losses), "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early, "patience": settings.patience,
        "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
        "final_loss": history.losses[-1], "tiles": len(samples), "image": str(Path(params["image"]).resolve()),
        "labels": str(Path(params["labels"]).resolve()), "training_px": train_px.tolist(),
        "head_choice": params["head"], "validation_fraction": params["validation_fraction"],
        "hold_out_block_px": HOLD_OUT_BLOCK_TILES * tile_px, "seed": params["seed"],
    }
    model.config.training["band_statistics"] = band_statistics(params["image"], normalisation.bands)
    progress.update(total - 1, total, "saving the head")
    folder = model.save_pretrained(params["out"])
    result: dict[str, Any] = {
        "model": str(folder),
        "classes": model.config.classes,
        "head": head,
        "metrics": metrics,
        "baseline": baseline,
        "cache": cache_info,
        "tiles": len(samples),
        "tile_px": tile_px,
        "labels_outside_raster": outside,
        "losses": history.losses,
        "validation_losses": history.validation_losses,
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "device": str(device),
    }
    train_done_s = time.monotonic() - started_s
    if params["preview"]:
        from .preview import run_preview

        result.update(run_preview(params, folder, area, raster_hw, raster_crs, raster_transform, tile_px, progress))
    if "most_uncertain" not in result:
        from .preview import most_uncertain_tile

        result["most_uncertain"] = most_uncertain_tile(model, samples, raster_transform, raster_crs, device)
    progress.update(total, total, "done")
    result["seconds"] = {"features": round(features_s, 2), "training": round(training_s, 2),
                         "train_total": round(train_done_s, 2), "total": round(time.monotonic() - started_s, 2)}
    return result
