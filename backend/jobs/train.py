"""The ``train`` job: a fusion and a head trained on the labelled pixels of a labels layer.

Backbone features of each grid tile under the labels come from the on-disk feature cache (see
:mod:`.feature_cache`) or are computed once and stored there, so retraining after a new label computes
only the new label's tiles. The head is cross-validated on spatial folds of whole labels in map units and
then trained on every label, and a per-pixel random forest is scored on the same folds as a baseline (the
shared few-shot trainer, :mod:`.fewshot`); after saving, an optional preview maps the area with its
uncertainty.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..inference.device import default_device
from ..models.band_context import BandContextConfig, band_context
from ..progress import Progress
from ..raster.band_check import band_statistics
from ..raster.bands import BandNormalisation, parse_bands
from ..raster.inspect import open_raster
from ..raster.labels import labels_on_raster, read_labels
from ..training.feature_cache import FeatureCache, raster_identity, tile_key
from ..training.fewshot import FewShotSetup, LabelTiles, cross_validate, epoch_progress, training_runs
from ..training.loop import TrainingSettings
from ..training.samples import (
    TileSample,
    check_labels,
    check_training_pixels,
    label_tiles,
    raster_normalisation,
    training_source,
)
from ..training.split import check_block_m, spatial_folds

#: The smallest tile the UNet takes: 8 latent pixels times 3 downsamplings (64 px for Stable Diffusion).
MIN_TILE_PX = 64
#: Fewer labels than this in all cannot be split into training and validation.
MIN_LABELS = 2
#: head "auto": UPerNet once the training labels cover this many pixels (four fully labelled 256 px tiles);
#: below, its pyramid pooling and FPN (a few hundred thousand weights) overfit, and the light per-pixel head
#: generalises better from a few polygons.
UPERNET_MIN_LABELLED_PX = 4 * 256 * 256
NORMALISATION_NOTE = "per-band 2nd-98th percentile over the whole raster (decimated read), scaled to [-1, 1]"


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
                  progress: Progress, total: int, metadata: np.ndarray | None = None) -> int:
    """Fill each sample's features from the cache or the extractor (then cached); returns how many tiles
    were computed. ``metadata`` (N, 7): each tile's DiffusionSat metadata, for an extractor in mode "tile"."""
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
            if metadata is None:
                features = extractor(torch.from_numpy(image)[None])
            else:
                features = extractor(torch.from_numpy(image)[None], torch.from_numpy(metadata[i:i + 1]))
        cache.put(key, features)
        sample.features = [f.to(torch.float16).to(torch.float32) for f in features]  # as a cache hit reads them
        computed += 1
    cache.flush()
    for sample in samples:
        sample.raw = None
    return computed


@dataclass
class TrainingSetup(FewShotSetup):
    """What ``train`` hands the few-shot trainer, and what its result reports."""

    head: str
    tile_px: int
    train_px: np.ndarray
    area: Any
    raster_crs: Any
    raster_transform: Any
    raster_hw: tuple[int, int]
    cache_info: dict[str, Any]
    features_s: float
    resolution: Any  # raster.resample's resolution of the tiles (gsd_m, resampled, warning)
    metadata: Any  # the tiles' DiffusionSat metadata reader, or None


def context_features(samples: list[TileSample], normalisation: BandNormalisation,
                     context: BandContextConfig) -> None:
    """Append each tile's band context (every band scaled as ``normalisation``, its local means and spread;
    :mod:`..models.band_context`) to its features, after the cached backbone features: cheap to compute,
    so never cached."""
    for sample in samples:
        scaled = normalisation.apply(sample.band_values)
        scaled[:, ~sample.valid] = 0.0
        sample.features.append(band_context(torch.from_numpy(scaled)[None], context.windows_px, context.spread_px))


def prepare_train(params: dict[str, Any], progress: Progress) -> TrainingSetup:
    """Everything of ``train`` before the trainer: labels, folds, tiles, backbone features (from the cache or
    computed), the band context, and the model maker."""
    from ..models.cache import BACKBONES
    from ..models.diffusion import DiffusionFeatureExtractor
    from ..models.diffusion.registry import resolve_config
    from ..models.diffusion.tile_metadata import tile_metadata_reader
    from ..models.segmenter import SatDiFuser
    started_s = time.monotonic()
    settings = TrainingSettings(epochs=params["epochs"], learning_rate=params["learning_rate"],
                                batch_size=params["batch_size"], patience=params["patience"], seed=params["seed"],
                                inner_folds=params["inner_folds"])
    if settings.epochs < 1 or settings.batch_size < 1 or settings.inner_folds < 1:
        raise UserError("epochs, batch_size and inner_folds must be at least 1")
    if params["cache_max_mb"] < 0:
        raise UserError("cache_max_mb must be 0 or more")
    timesteps = parse_timesteps(params["timesteps"])
    progress.update(0, 1, "reading the labels")
    labels = read_labels(params["labels"])
    check_labels(labels, MIN_LABELS)
    folds = spatial_folds(labels, check_block_m(params["hold_out_block_m"]), params["seed"], params["folds"])
    device = default_device()
    backbone_config = resolve_config(params["backbone"])
    # Tiles and labels on the grid segment reads (the backbone's pretraining resolution, or gsd_m).
    with open_raster(params["image"]) as src, \
            training_source(src, params.get("gsd_m"), backbone_config.gsd_m) as (source, resolution):
        local, area, outside = labels_on_raster(labels, source)
        check_labels(local, MIN_LABELS)
        bands = parse_bands(params["bands"], src)
        tile_px = int(params["tile_px"] or backbone_config.tile_px)
        if tile_px < MIN_TILE_PX:
            raise UserError(f"tile_px must be at least {MIN_TILE_PX}; got {tile_px}")
        samples = label_tiles(source, local, area, tile_px, bands)
        normalisation = raster_normalisation(src, bands, params["seed"])
        context = None
        if params.get("band_context", True):
            every_band = raster_normalisation(src, tuple(range(1, src.count + 1)), params["seed"])
            context = BandContextConfig(every_band.bands, every_band.low, every_band.high)
        metadata = tile_metadata_reader(params.get("metadata"), resolution.gsd_m, params.get("date"), params["image"])
        tile_metadata = metadata(source, [s.window for s in samples]) if metadata else None
        raster_crs, raster_transform, raster_hw = source.crs, source.transform, (source.height, source.width)
    tiles = LabelTiles(samples, local, raster_transform)
    train_px = check_training_pixels(local, tiles.targets(np.ones(len(local.geometries), dtype=bool)))
    class_dicts = [c.to_json() for c in local.classes]
    # The backbone loads last: every mistake in the labels is reported before a multi-gigabyte load.
    progress.update(0, 1, "loading the backbone")
    backbone = BACKBONES.get(params["backbone"], device,  # kept loaded between jobs of the worker
                             unet_folder=params.get("unet_folder"))
    extractor = DiffusionFeatureExtractor(backbone, timesteps=timesteps, inversion=params.get("inversion") or "reuse",
                                          inversion_steps=params.get("inversion_steps"),
                                          metadata="tile" if metadata else "none")

    cache = FeatureCache(params["cache_dir"], max_bytes=params["cache_max_mb"] * 1024**2)
    raster = raster_identity(params["image"])
    feature_config = {"backbone_sha256": backbone.sha256, "timesteps": list(extractor.timesteps),
                      "blocks": list(extractor.blocks), "levels": list(extractor.levels),
                      "bands": list(normalisation.bands), "band_low": list(normalisation.low),
                      "band_high": list(normalisation.high), "reading": extractor.describe()}
    if resolution.resampled:  # keys of tiles at the raster's own resolution stay those of earlier runs
        feature_config["gsd_m"] = resolution.gsd_m
    if metadata:
        feature_config["metadata"] = metadata.describe()
    keys = [tile_key(raster, s.window, feature_config) for s in samples]
    total = len(samples) + training_runs(folds, settings) * settings.epochs + 3
    computed = tile_features(samples, keys, cache, extractor, normalisation, progress, total, tile_metadata)
    if context is not None:
        context_features(samples, BandNormalisation(context.bands, context.low, context.high), context)
    head = choose_head(params["head"], int(train_px.sum()))

    def new_model() -> SatDiFuser:
        return SatDiFuser.create(
            extractor.feature_info, class_dicts, params["fusion"], head,
            fusion_kwargs={"out_chs": params["fusion_chs"]},
            backbone={"name": backbone.name, "source": backbone_source(params["backbone"]),
                      "sha256": backbone.sha256},
            timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
            bands=list(normalisation.bands), band_low=list(normalisation.low), band_high=list(normalisation.high),
            normalisation=NORMALISATION_NOTE, tile_px=tile_px, features=extractor.describe(),
            band_context=context,
        )

    cache_info = {"tiles_total": len(samples), "tiles_computed": computed, "tiles_cached": len(samples) - computed,
                  "folder": str(cache.folder), "bytes": cache.total_bytes, "evicted": cache.evicted,
                  "labels_outside_raster": outside}
    return TrainingSetup(tiles, folds, class_dicts, new_model, settings, device, head, tile_px, train_px, area,
                         raster_crs, raster_transform, raster_hw, cache_info, time.monotonic() - started_s,
                         resolution, metadata)


def run_train(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    started_s = time.monotonic()
    setup = prepare_train(params, progress)
    settings, samples, folds = setup.settings, setup.tiles.samples, setup.folds
    total = len(samples) + training_runs(folds, settings) * settings.epochs + 3
    features_s = setup.features_s
    trained = cross_validate(setup.tiles, folds, setup.classes, setup.new_model, settings, setup.device,
                             bool(params["baseline"]), epoch_progress(progress, len(samples), total, settings.epochs))
    model, history, metrics, baseline = trained.head, trained.history, trained.metrics, trained.baseline
    training_s = time.monotonic() - started_s - features_s
    cache_info = {k: v for k, v in setup.cache_info.items() if k != "labels_outside_raster"}
    model.config.metrics = {**metrics, "baseline": baseline, "comparison": trained.comparison}
    model.config.training = {
        "epochs": settings.epochs, "epochs_run": len(history.losses), "patience": settings.patience,
        "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
        "final_loss": history.losses[-1] if history.losses else None, "tiles": len(samples),
        "image": str(Path(params["image"]).resolve()),
        "labels": str(Path(params["labels"]).resolve()), "training_px": setup.train_px.tolist(),
        "head_choice": params["head"], "validation": trained.validation, "seed": params["seed"],
        "gsd_m": setup.resolution.gsd_m, "resampled": setup.resolution.resampled,
        "metadata": setup.metadata.describe() if setup.metadata else None,
    }
    model.config.training["band_statistics"] = band_statistics(params["image"], model.config.bands)
    progress.update(total - 1, total, "saving the head")
    folder = model.save_pretrained(params["out"])
    result: dict[str, Any] = {
        "model": str(folder),
        "classes": model.config.classes,
        "head": setup.head,
        "band_context": bool(model.config.band_context),
        "metrics": metrics,
        "baseline": baseline,
        "comparison": trained.comparison,
        "validation": trained.validation,
        "cache": cache_info,
        "tiles": len(samples),
        "tile_px": setup.tile_px,
        "labels_outside_raster": setup.cache_info["labels_outside_raster"],
        "losses": history.losses,
        "device": str(setup.device),
        "gsd_m": setup.resolution.gsd_m,
        "warnings": [setup.resolution.warning] if setup.resolution.warning else [],
    }
    train_done_s = time.monotonic() - started_s
    if params["preview"]:
        from .train_preview import run_preview

        result.update(run_preview(params, folder, setup.area, setup.raster_hw, setup.raster_crs,
                                  setup.raster_transform, setup.tile_px, progress))
    if "most_uncertain" not in result:
        from .train_preview import most_uncertain_tile

        result["most_uncertain"] = most_uncertain_tile(model, samples, setup.raster_transform, setup.raster_crs,
                                                       setup.device)
    progress.update(total, total, f"done. {trained.verdict()}")
    result["seconds"] = {"features": round(features_s, 2), "training": round(training_s, 2),
                         "train_total": round(train_done_s, 2), "total": round(time.monotonic() - started_s, 2)}
    return result
