"""The ``segment`` job: a class map of an area with a trained head, streamed in blended tiles.

Tiles of the model's size overlap and are blended with weights that fall towards their edges
(:mod:`.raster.tiles`); score sums are kept only for the rows that tiles still touch
(:mod:`.raster.blending`) and finished rows go straight into tiled GeoTIFFs and into the polygoniser
(:mod:`.raster.writers`, :mod:`.raster.polygons`), so memory does not grow with the area. Outputs in
the chosen folder: ``classes.tif`` (+ RAT in ``classes.tif.aux.xml``, ``classes.qml``),
``confidence.tif``, ``uncertainty.tif`` and ``classes.gpkg`` (+ ``classes_polygons.qml``), all
renamed into place together when complete.
"""

from __future__ import annotations

import datetime
import math
import time
from contextlib import ExitStack
from importlib import metadata
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
from .raster.area import AreaOfInterest, area_window, read_area
from .raster.bands import BandNormalisation, parse_bands, read_bands
from .raster.blending import ScoreStrip, StripAccumulator, finished_row
from .raster.inspect import open_raster
from .raster.polygons import PolygonLayerWriter, StripPolygonizer
from .raster.styles import categorized_polygons_qml, paletted_raster_qml, score_raster_qml, write_style
from .raster.tiles import blend_weights, tile_windows
from .raster.writers import (
    BLOCK_PX,
    CLASS_NODATA,
    SCORE_NODATA,
    OutputFiles,
    open_class_raster,
    open_score_raster,
    write_attribute_table,
)

CLASS_RASTER_NAME = "classes.tif"
CLASS_STYLE_NAME = "classes.qml"
CLASS_POLYGONS_NAME = "classes.gpkg"
POLYGON_STYLE_NAME = "classes_polygons.qml"
CONFIDENCE_NAME = "confidence.tif"
CONFIDENCE_STYLE_NAME = "confidence.qml"
UNCERTAINTY_NAME = "uncertainty.tif"
UNCERTAINTY_STYLE_NAME = "uncertainty.qml"
#: GDAL's block cache while writing (MB): the outputs are written block-row by block-row, so a small
#: cache suffices and the process's memory does not grow with the raster.
GDAL_CACHE_MB = 64


def _load_model(params: dict[str, Any], device: torch.device):
    """The head with its backbone attached (the backbone from the process's cache), the backbone and
    the head's sha256."""
    from .hub.checksums import file_sha256
    from .models.cache import BACKBONES
    from .models.segmenter import HEAD_WEIGHTS_NAME, SatDiFuser, read_config

    config = read_config(params["model"])
    source = params["backbone"] or config.backbone.get("source") or config.backbone.get("name")
    if not source:
        raise UserError(f"The head {params['model']} records no backbone; pass one with --backbone")
    try:
        backbone = BACKBONES.get(source, device)
    except UserError as exc:
        raise UserError(f"Cannot load the backbone of this head ({exc}); pass its folder with --backbone") from None
    model = SatDiFuser.from_pretrained(params["model"], backbone=backbone)
    head_sha256 = file_sha256(Path(params["model"]) / HEAD_WEIGHTS_NAME)
    return model.to(device), backbone, head_sha256


def model_bands(bands_text: str | None, head_bands: list[int], src: rasterio.io.DatasetReader) -> tuple[int, ...]:
    """The raster bands fed to the model as R, G, B: the user's choice, else those the head was trained
    on. A head for bands the raster lacks is refused with both band sets named."""
    if bands_text:
        return parse_bands(bands_text, src)
    missing = [b for b in head_bands if not 1 <= b <= src.count]
    if missing:
        raise UserError(
            f"The model was trained on bands {','.join(map(str, head_bands))} (fed as red, green, blue), but "
            f"this raster has {src.count} band{'s' if src.count != 1 else ''} (1..{src.count}): it is a model for "
            "other bands. Choose the raster's bands to feed it with the 'bands' parameter (e.g. 1 for one band)")
    return tuple(head_bands)


def check_raster(src: rasterio.io.DatasetReader) -> None:
    if src.crs is None:
        raise UserError("The raster has no CRS, so its outputs cannot be placed on a map; assign a CRS first")
    odd = [d for d in src.dtypes if np.dtype(d).kind == "c"]
    if odd:
        raise UserError(f"The raster holds complex values ({odd[0]}); convert it to real values (amplitude) first")


def _versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    return {"terrafuse": __version__, "torch": torch.__version__, "diffusers": version("diffusers"),
            "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__}


def run_segment(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from .models.segmenter import read_config
    from .training.job import default_device

    started_s = time.monotonic()
    device = default_device()
    config = read_config(params["model"])  # cheap checks before the backbone loads
    area = read_area(params["aoi"]) if params["aoi"] else None
    batch_size = max(1, params["batch_size"])
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(params["image"]) as src:
        check_raster(src)
        window, local_area = area_window(src, area)
        bands = model_bands(params["bands"], list(config.bands), src)
        tile_px = config.tile_px
        overlap_px = params["overlap_px"] if params["overlap_px"] is not None else tile_px // 4
        if not 0 <= overlap_px < tile_px:
            raise UserError(f"overlap_px must lie in 0..{tile_px - 1} for tiles of {tile_px} px; got {overlap_px}")
        tiles = tile_windows(window, tile_px, overlap_px, (src.height, src.width))
        total = len(tiles) + 2
        progress.update(0, total, "loading the model")
        model, backbone, head_sha256 = _load_model(params, device)
        normalisation = BandNormalisation(bands, tuple(config.band_low), tuple(config.band_high))
        provenance = {
            "job": "segment", "model": str(Path(params["model"]).resolve()), "checkpoint_sha256": head_sha256,
            "head_sha256": head_sha256, **backbone.provenance(), "fusion": config.fusion, "head": config.head,
            "timesteps": config.timesteps, "classes": config.classes, "bands": list(bands),
            "normalisation": {"low": list(config.band_low), "high": list(config.band_high)},
            "parameters": {**params, "bands": list(bands), "overlap_px": overlap_px, "tile_px": tile_px,
                           "batch_size": batch_size},
            "image": str(Path(params["image"]).resolve()), "aoi": params["aoi"],
            "device": str(device), "terrafuse": __version__, "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        engine = _StreamingSegmentation(src, window, local_area, config.classes, params, provenance)
        with OutputFiles(Path(params["out"])) as outputs, ExitStack() as stack:
            engine.open(outputs, stack)
            accumulator = StripAccumulator(len(config.classes), window)
            done = 0
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start:start + batch_size]
                images, valids = [], []
                for tile in batch:
                    raw, valid = read_bands(src, tile, normalisation.bands)
                    image = normalisation.apply(raw)
                    image[:, ~valid] = 0.0
                    images.append(image)
                    valids.append(valid)
                progress.check()
                with torch.inference_mode():
                    probabilities = model(torch.from_numpy(np.stack(images)).to(device)).softmax(1)
                    probabilities = probabilities.float().cpu().numpy()
                for tile, tile_scores, valid in zip(batch, probabilities, valids):
                    accumulator.add(tile, tile_scores, valid, blend_weights(valid.shape, overlap_px))
                    done += 1
                    progress.update(done, total, f"tile {done} of {len(tiles)}")
                following = tiles[start + batch_size] if start + batch_size < len(tiles) else None
                strip = accumulator.pop(finished_row(int(following.row_off) if following else None, window,
                                                     BLOCK_PX))
                if strip is not None:
                    engine.write(strip)
            progress.update(len(tiles) + 1, total, "writing the outputs")
            stack.close()  # every dataset closed before the attribute table and the renames
            result_layers = engine.finish(outputs)
            outputs.commit()
    progress.update(total, total, "done")
    counts = engine.counts
    return {
        "class_raster": str(engine.final(CLASS_RASTER_NAME)),
        "class_polygons": str(engine.final(CLASS_POLYGONS_NAME)) if params["polygons"] else None,
        "confidence_raster": str(engine.final(CONFIDENCE_NAME)) if params["confidence"] else None,
        "uncertainty_raster": str(engine.final(UNCERTAINTY_NAME)) if params["uncertainty"] else None,
        "polygons": engine.polygon_count,
        "width": int(window.width), "height": int(window.height), "tiles": len(tiles), "tile_px": tile_px,
        "overlap_px": overlap_px,
        "class_px": {c["name"]: int(counts[int(c["id"])]) for c in config.classes},
        "nodata_px": int(counts[CLASS_NODATA]),
        "device": str(device),
        "provenance": provenance,
        "layers": result_layers,
        "seconds": round(time.monotonic() - started_s, 2),
    }


class _StreamingSegmentation:
    """The outputs of one segmentation, fed finished strips of blended scores top to bottom."""

    def __init__(self, src: rasterio.io.DatasetReader, window: Window, area: AreaOfInterest | None,
                 classes: list[dict[str, Any]], params: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.window = window
        self.area = area
        self.classes = classes
        self.params = params
        self.provenance = provenance
        self.width, self.height = int(window.width), int(window.height)
        self.transform = src.window_transform(window)
        self.crs = src.crs
        self.class_ids = np.array([int(c["id"]) for c in classes], dtype=np.uint8)
        self.counts = np.zeros(256, dtype=np.int64)
        self.polygon_count = 0
        self.folder = Path(params["out"])
        self._datasets: dict[str, rasterio.io.DatasetWriter] = {}
        self._partials: dict[str, Path] = {}
        self._polygonizer: StripPolygonizer | None = None
        self._polygons: PolygonLayerWriter | None = None

    def final(self, name: str) -> Path:
        return self.folder / name

    def open(self, outputs: OutputFiles, stack: ExitStack) -> None:
        args = (self.width, self.height, self.transform, self.crs)
        path = self._partials[CLASS_RASTER_NAME] = outputs.partial(CLASS_RASTER_NAME)
        self._datasets["classes"] = stack.enter_context(
            open_class_raster(path, *args, self.classes, self.provenance))
        if self.params["confidence"]:
            path = self._partials[CONFIDENCE_NAME] = outputs.partial(CONFIDENCE_NAME)
            self._datasets["confidence"] = stack.enter_context(
                open_score_raster(path, *args, "confidence (blended probability of the class)", self.provenance))
        if self.params["uncertainty"]:
            path = self._partials[UNCERTAINTY_NAME] = outputs.partial(UNCERTAINTY_NAME)
            self._datasets["uncertainty"] = stack.enter_context(
                open_score_raster(path, *args, "uncertainty (entropy / log(classes))", self.provenance))
        if self.params["polygons"]:
            path = self._partials[CLASS_POLYGONS_NAME] = outputs.partial(CLASS_POLYGONS_NAME)
            self._polygonizer = StripPolygonizer(self.transform, self.height)
            self._polygons = PolygonLayerWriter(path, self.crs, self.transform, self.classes, self.provenance)

    def write(self, strip: ScoreStrip) -> None:
        """Classes, confidence and uncertainty of a finished strip, written as one window of the outputs."""
        row0 = strip.row_off - int(self.window.row_off)
        probabilities = strip.probabilities()
        index = probabilities.argmax(axis=0)
        confidence = np.take_along_axis(probabilities, index[None], axis=0)[0]
        invalid = strip.invalid | (strip.weights == 0)
        if self.area is not None:
            strip_transform = self.transform @ rasterio.Affine.translation(0, row0)
            invalid |= geometry_mask(self.area.geometries, invalid.shape, strip_transform)
        class_ids = self.class_ids[index]
        class_ids[invalid] = CLASS_NODATA
        confidence[invalid] = SCORE_NODATA
        self.counts += np.bincount(class_ids.ravel(), minlength=256)
        out_window = Window(0, row0, self.width, strip.height)
        self._datasets["classes"].write(class_ids, 1, window=out_window)
        if "confidence" in self._datasets:
            self._datasets["confidence"].write(confidence.astype(np.float32), 1, window=out_window)
        if "uncertainty" in self._datasets:
            self._datasets["uncertainty"].write(_normalised_entropy(probabilities, invalid), 1, window=out_window)
        if self._polygonizer is not None and self._polygons is not None:
            self._polygons.add(self._polygonizer.add_strip(class_ids, np.where(invalid, 0.0, confidence), row0))

    def finish(self, outputs: OutputFiles) -> list[dict[str, Any]]:
        """Refuse an area without a valid pixel; close the polygons, write the attribute table and the
        styles; the layers list (top to bottom) the plugin adds."""
        if self.counts[CLASS_NODATA] == self.width * self.height:
            raise UserError("The area holds no valid pixel: every pixel is nodata or outside the area")
        classified = {int(c["id"]): int(self.counts[int(c["id"])]) for c in self.classes}
        write_attribute_table(self._partials[CLASS_RASTER_NAME], self.classes, classified)
        write_style(outputs.partial(CLASS_STYLE_NAME), paletted_raster_qml(self.classes))
        layers = []
        if self._polygonizer is not None and self._polygons is not None:
            self._polygons.add(self._polygonizer.finish())
            self._polygons.close()
            self.polygon_count = self._polygons.count
            write_style(outputs.partial(POLYGON_STYLE_NAME), categorized_polygons_qml(self.classes))
            layers.append({"path": str(self.final(CLASS_POLYGONS_NAME)), "kind": "vector",
                           "name": "Class polygons", "qml": str(self.final(POLYGON_STYLE_NAME)), "visible": False})
        layers.append({"path": str(self.final(CLASS_RASTER_NAME)), "kind": "raster", "name": "Classes",
                       "qml": str(self.final(CLASS_STYLE_NAME)), "visible": True})
        for key, name, style, title, black_to_white in (
                ("confidence", CONFIDENCE_NAME, CONFIDENCE_STYLE_NAME, "Confidence", True),
                ("uncertainty", UNCERTAINTY_NAME, UNCERTAINTY_STYLE_NAME, "Uncertainty", False)):
            if self.params[key]:
                write_style(outputs.partial(style), score_raster_qml(black_to_white))
                layers.append({"path": str(self.final(name)), "kind": "raster", "name": title,
                               "qml": str(self.final(style)), "visible": False})
        return layers


def _normalised_entropy(probabilities: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Shannon entropy of the blended class probabilities over log(classes): 0 sure, 1 uniform."""
    classes = probabilities.shape[0]
    if classes < 2:
        entropy = np.zeros(invalid.shape, dtype=np.float32)
    else:
        p = np.clip(probabilities, 1e-12, 1.0)
        entropy = (-(p * np.log(p)).sum(axis=0) / math.log(classes)).astype(np.float32)
        entropy = np.clip(entropy, 0.0, 1.0)
    entropy[invalid] = SCORE_NODATA
    return entropy
