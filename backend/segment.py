"""The ``segment`` job: a class map of an area with a trained head, in blended overlapping tiles.

Outputs in the chosen folder: ``classes.tif`` (uint8 class ids, nodata 255, colour table) and
``classes.gpkg`` (polygons with class_id, class_name, area_m2), each renamed into place when complete.
The whole area's class scores are held in memory here; the raster-engine work streams them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.features import geometry_mask
from rasterio.windows import Window

from . import __version__
from .errors import UserError
from .progress import Progress
from .raster.area import area_window, read_area
from .raster.bands import BandNormalisation, read_bands
from .raster.inspect import open_raster
from .raster.tiles import blend_weights, tile_windows
from .raster.writers import CLASS_NODATA, write_class_polygons, write_class_raster

CLASS_RASTER_NAME = "classes.tif"
CLASS_POLYGONS_NAME = "classes.gpkg"


def _load_model(params: dict[str, Any], device: torch.device):
    from .hub.checksums import file_sha256
    from .models.diffusion import load_backbone
    from .models.segmenter import HEAD_WEIGHTS_NAME, SatDiFuser, read_config

    config = read_config(params["model"])
    source = params["backbone"] or config.backbone.get("source") or config.backbone.get("name")
    if not source:
        raise UserError(f"The head {params['model']} records no backbone; pass one with --backbone")
    try:
        backbone = load_backbone(source, device)
    except UserError as exc:
        raise UserError(f"Cannot load the backbone of this head ({exc}); pass its folder with --backbone") from None
    model = SatDiFuser.from_pretrained(params["model"], backbone=backbone)
    head_sha256 = file_sha256(Path(params["model"]) / HEAD_WEIGHTS_NAME)
    return model.to(device), backbone, head_sha256


def run_segment(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from .models.segmenter import read_config
    from .training.job import default_device

    started_s = time.monotonic()
    device = default_device()
    config = read_config(params["model"])  # cheap checks before the backbone loads
    area = read_area(params["aoi"]) if params["aoi"] else None
    batch_size = max(1, params["batch_size"])
    out = Path(params["out"])
    with open_raster(params["image"]) as src:
        window, local_area = area_window(src, area)
        missing = [b for b in config.bands if not 1 <= b <= src.count]
        if missing:
            raise UserError(f"The head reads band {missing[0]}, but the raster has bands 1..{src.count}")
        tile_px = config.tile_px
        overlap_px = params["overlap_px"] if params["overlap_px"] is not None else tile_px // 4
        if not 0 <= overlap_px < tile_px:
            raise UserError(f"overlap_px must lie in 0..{tile_px - 1} for tiles of {tile_px} px; got {overlap_px}")
        tiles = tile_windows(window, tile_px, overlap_px, (src.height, src.width))
        total = len(tiles) + 2
        progress.update(0, total, "loading the model")
        model, backbone, head_sha256 = _load_model(params, device)
        normalisation = BandNormalisation(tuple(config.bands), tuple(config.band_low), tuple(config.band_high))
        height, width = int(window.height), int(window.width)
        scores = np.zeros((len(config.classes), height, width), dtype=np.float32)
        weight_sum = np.zeros((height, width), dtype=np.float32)
        invalid = np.zeros((height, width), dtype=bool)
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start:start + batch_size]
            progress.update(start, total, f"tile {start + 1} of {len(tiles)}")
            images, valids = [], []
            for tile in batch:
                raw, valid = read_bands(src, tile, normalisation.bands)
                image = normalisation.apply(raw)
                image[:, ~valid] = 0.0
                images.append(image)
                valids.append(valid)
            with torch.inference_mode():
                probabilities = model(torch.from_numpy(np.stack(images)).to(device)).softmax(1).cpu().numpy()
            for tile, tile_scores, valid in zip(batch, probabilities, valids):
                _accumulate(window, tile, tile_scores, valid, blend_weights(valid.shape, overlap_px),
                            scores, weight_sum, invalid)
        transform = src.window_transform(window)
        crs = src.crs
    progress.update(len(tiles), total, "writing the outputs")
    index = scores.argmax(axis=0)
    ids = np.array([c["id"] for c in config.classes], dtype=np.uint8)
    class_ids = ids[index]
    class_ids[invalid | (weight_sum == 0)] = CLASS_NODATA
    if local_area is not None:
        outside = geometry_mask(local_area.geometries, (height, width), transform)
        class_ids[outside] = CLASS_NODATA
    provenance = {
        "job": "segment", "model": str(Path(params["model"]).resolve()), "head_sha256": head_sha256,
        **backbone.provenance(), "fusion": config.fusion, "head": config.head, "timesteps": config.timesteps,
        "bands": config.bands, "tile_px": tile_px, "overlap_px": overlap_px,
        "image": str(Path(params["image"]).resolve()), "aoi": params["aoi"],
        "terrafuse": __version__, "torch": torch.__version__, "rasterio": rasterio.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    raster_path = write_class_raster(out / CLASS_RASTER_NAME, class_ids, transform, crs, config.classes, provenance)
    polygons = write_class_polygons(out / CLASS_POLYGONS_NAME, class_ids, transform, crs, config.classes,
                                    provenance)
    progress.update(total, total, "done")
    counts = np.bincount(class_ids.ravel(), minlength=256)
    return {
        "class_raster": str(raster_path),
        "class_polygons": str(out / CLASS_POLYGONS_NAME),
        "polygons": polygons,
        "width": width, "height": height, "tiles": len(tiles), "tile_px": tile_px, "overlap_px": overlap_px,
        "class_px": {c["name"]: int(counts[c["id"]]) for c in config.classes},
        "nodata_px": int(counts[CLASS_NODATA]),
        "device": str(device),
        "provenance": provenance,
        "seconds": round(time.monotonic() - started_s, 2),
    }


def _accumulate(area: Window, tile: Window, tile_scores: np.ndarray, valid: np.ndarray, weights: np.ndarray,
                scores: np.ndarray, weight_sum: np.ndarray, invalid: np.ndarray) -> None:
    """Add a tile's weighted class probabilities to the area's accumulators, where the two overlap."""
    row0 = max(int(tile.row_off), int(area.row_off))
    col0 = max(int(tile.col_off), int(area.col_off))
    row1 = min(int(tile.row_off + tile.height), int(area.row_off + area.height))
    col1 = min(int(tile.col_off + tile.width), int(area.col_off + area.width))
    if row1 <= row0 or col1 <= col0:
        return
    tile_rows = slice(row0 - int(tile.row_off), row1 - int(tile.row_off))
    tile_cols = slice(col0 - int(tile.col_off), col1 - int(tile.col_off))
    area_rows = slice(row0 - int(area.row_off), row1 - int(area.row_off))
    area_cols = slice(col0 - int(area.col_off), col1 - int(area.col_off))
    w = weights[tile_rows, tile_cols]
    scores[:, area_rows, area_cols] += tile_scores[:, tile_rows, tile_cols] * w
    weight_sum[area_rows, area_cols] += w
    invalid[area_rows, area_cols] |= ~valid[tile_rows, tile_cols]
