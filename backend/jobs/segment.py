"""The ``segment`` job: a class map of an area with a trained head, in blended tiles, in bounded memory.

Tiles of the model's size overlap and are blended with weights that fall towards their edges
(:mod:`.raster.tiles`). The tiles come from ONE grid anchored at the area, but are predicted chunk by
chunk: the area is cut into output chunks of at most :data:`CHUNK_PX` square, aligned to the output's
blocks (:mod:`.raster.chunks`); for each chunk in row-major order the tiles touching it are blended
into score sums restricted to the chunk and kept only for the rows tiles still touch
(:mod:`.raster.blending`), and finished rows go straight into tiled GeoTIFFs. So the scores held span
one chunk's width, whatever the area's size. The cost: a tile straddling a chunk border is predicted
once for each chunk it touches, about ``(1 + tile_px / CHUNK_PX) ** 2`` times the tiles (27 % more for
512 px tiles in 4096 px chunks); an area within one chunk pays nothing. The model is only reached through a
:class:`~.inference.predictor.TilePredictor` (in-process, or a Ray cluster with ``cluster``).

With ``gsd_m`` the input is read through a WarpedVRT at the model's working resolution, predicted there
and brought back to the raster's grid window by window (classes nearest, scores bilinear). Polygons
(and the class counts) come last, from the finished class raster read back in strips
(:mod:`.raster.polygons`).

Outputs in the chosen folder: ``classes.tif`` (+ RAT in ``classes.tif.aux.xml``, ``classes.qml``),
``confidence.tif``, ``uncertainty.tif`` and ``classes.gpkg`` (+ ``classes_polygons.qml``), all written
under temporary names and renamed into place together when complete; a stop of any kind leaves none of
them. The finished work survives in the job's resume store beside the cache (:mod:`.raster.resume`): the
final rows of each chunk and, after each row of tiles, the blending state, so a run after a stopped or
killed one redoes at most one row of tiles; ``fresh`` starts again. The store goes when the job completes.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .. import __version__
from ..errors import UserError
from ..inference.executor import make_predictor
from ..inference.predictor import TilePredictor
from ..inference.tile_model import TileModelSpec, model_sha256
from ..progress import Progress
from ..raster.area import AreaOfInterest, area_window, covering_window, read_area
from ..raster.band_check import area_sample, check_bands
from ..raster.bands import BandNormalisation, parse_bands, percentile_normalisation, read_bands
from ..raster.blending import ScoreStrip, StripAccumulator, finished_row
from ..raster.chunks import chunk_windows, strip_windows, tiles_touching
from ..raster.inspect import open_raster
from ..raster.journal import fingerprint, input_facts
from ..raster.polygons import PolygonLayerWriter, StripPolygonizer
from ..raster.resample import WorkingGrid, recorded_gsd, resolve_gsd, working_grid
from ..raster.resume import ResumeStore
from ..raster.styles import categorized_polygons_qml, paletted_raster_qml, score_raster_qml, write_style
from ..raster.tiles import blend_weights, tile_windows
from ..raster.writers import (
    BLOCK_PX,
    CLASS_NODATA,
    SCORE_NODATA,
    OutputFiles,
    open_class_raster,
    open_score_raster,
    write_attribute_table,
)
from .info import package_version

LOG = logging.getLogger("terrafuse.segment")
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
#: Side of the output chunks (px, a multiple of the output's block size): the engine holds the scores of
#: one chunk's width; tiles straddling chunk borders are predicted once per chunk they touch (see the
#: module's docstring for the cost). Tests patch it to force several chunks.
CHUNK_PX = 4096
#: Rows of the strips the finished class raster is read back in, for its polygons: whole blocks, at most
#: this many bytes of class ids and confidence (5 bytes a pixel) per strip, one block row at the least.
READBACK_BYTES = 8 * 2**20
#: Changes whenever the engine would write other pixels for the same inputs (part of the fingerprint).
ENGINE_VERSION = 3


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
    return {"terrafuse": __version__, "torch": torch.__version__, "diffusers": package_version("diffusers"),
            "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__}


def working_gsd(gsd_m: float | None, config: Any) -> tuple[float | None, str]:
    """The ground sample distance (m) the model works at: ``gsd_m`` when given (0: the raster's own),
    else the one the head records from its training, else None (the raster's own); and a warning when
    ``gsd_m`` differs from the head's."""
    return resolve_gsd(gsd_m, (config.training or {}).get("gsd_m"), "the head was trained at")


def run_segment(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from ..models.diffusion.tile_metadata import head_tile_metadata
    from ..models.segmenter import read_config

    started_s = time.monotonic()
    config = read_config(params["model"])  # cheap checks before the backbone loads
    area = read_area(params["aoi"]) if params["aoi"] else None
    batch_size = max(1, params["batch_size"] or default_batch_size(params))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(params["image"]) as src, ExitStack() as inputs:
        check_raster(src)
        window, local_area = area_window(src, area)
        bands = model_bands(params["bands"], list(config.bands), src)
        tile_px = config.tile_px
        gsd_m, gsd_warning = working_gsd(params.get("gsd_m"), config)
        grid = working_grid(src, gsd_m)
        overlap_px = params["overlap_px"] if params["overlap_px"] is not None else default_overlap(tile_px, grid)
        if not 0 <= overlap_px < tile_px:
            raise UserError(f"overlap_px must lie in 0..{tile_px - 1} for tiles of {tile_px} px; got {overlap_px}")
        if grid is None:
            source, work_window, work_area = src, window, local_area
        else:
            source = inputs.enter_context(grid.open(src))
            work_window, work_area = covering_window(source, src.window_bounds(window)), local_area
        tiles = tile_windows(work_window, tile_px, overlap_px, (source.height, source.width))
        chunks = [(chunk, tiles_touching(tiles, chunk)) for chunk in chunk_windows(work_window, CHUNK_PX)]
        predictions = sum(len(chunk_tiles) for _, chunk_tiles in chunks)
        total = predictions + 2
        spec = TileModelSpec("segment", {"model": str(Path(params["model"]).resolve()), "backbone": params["backbone"],
                                         "precision": params["precision"], "compile": bool(params["compile"]),
                                         "unet_folder": params.get("unet_folder")})
        head_sha256 = model_sha256(spec)
        normalisation, warnings = area_normalisation(src, window, bands, config, bool(params.get("rescale_per_area")))
        context = context_normalisation(config, src)
        warnings = [gsd_warning, *warnings] if gsd_warning else warnings
        tile_metadata = head_tile_metadata(config, recorded_gsd(src, grid), params.get("date"), params["image"])
        parameters = {**params, "bands": list(bands), "overlap_px": overlap_px, "tile_px": tile_px,
                      "batch_size": batch_size, "gsd_m": grid.gsd_m if grid else None}
        job_fingerprint = fingerprint({
            "engine": ENGINE_VERSION, "chunk_px": CHUNK_PX, "image": input_facts(params["image"]),
            "aoi": input_facts(params["aoi"]) if params["aoi"] else None, "model": spec.params,
            "model_sha256": head_sha256, "config": config.to_json(), "bands": list(bands),
            "tile_px": tile_px, "overlap_px": overlap_px, "gsd_m": grid.gsd_m if grid else None,
            "normalisation": normalisation.to_json(),
            "metadata": tile_metadata.describe() if tile_metadata else None,
            "outputs": [bool(params[k]) for k in ("confidence", "uncertainty", "polygons")]})
        engine = _ChunkedSegmentation(src, window, local_area, config.classes, params)
        store = ResumeStore(job_fingerprint, params["out"], fresh=bool(params.get("fresh")))
        with OutputFiles(Path(params["out"])) as outputs:
            engine.prepare(outputs, grid, source, work_window, work_area)
            provenance = store.extra.get("provenance") if store.resumed else None
            if provenance is None and store.resumed:  # a store without its provenance: start again
                store.remove()
            done = sum(min(store.chunk(i).tiles, len(chunk_tiles)) for i, (_, chunk_tiles) in enumerate(chunks))
            todo = [(i, chunk, chunk_tiles) for i, (chunk, chunk_tiles) in enumerate(chunks)
                    if not store.chunk(i).done]
            predictor = None
            cluster_run: dict[str, Any] = {}
            try:
                if todo:
                    progress.update(done, total, "loading the model")
                    predictor = make_predictor(spec, params, progress=progress)
                if provenance is None:
                    provenance = {
                        "job": "segment", "model": str(Path(params["model"]).resolve()),
                        "checkpoint_sha256": head_sha256, "head_sha256": head_sha256,
                        **(predictor.provenance if predictor else {}), "fusion": config.fusion,
                        "head": config.head, "timesteps": config.timesteps, "classes": config.classes,
                        "bands": list(bands), "normalisation": normalisation.to_json(),
                        "metadata": tile_metadata.describe() if tile_metadata else None,
                        "parameters": parameters, "image": str(Path(params["image"]).resolve()),
                        "aoi": params["aoi"], "device": _device_name(predictor) if predictor else "",
                        "terrafuse": __version__, "versions": _versions(),
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    }
                    store.set_extra(provenance=provenance)
                engine.create(provenance)
                engine.restore(store, len(chunks))
                if predictor is not None:
                    engine.predict(predictor, source, todo, normalisation, overlap_px, batch_size, store,
                                   progress, done, total, predictions, tile_metadata, context)
            finally:
                if predictor is not None:
                    predictor.close()
                    cluster_run = getattr(predictor, "report", dict)()
            progress.update(predictions + 1, total, "writing the outputs")
            result_layers = engine.finish(outputs, provenance, progress)
            outputs.commit()
        store.remove()
    progress.update(total, total, "done")
    counts = engine.counts
    return {
        "class_raster": str(engine.final(CLASS_RASTER_NAME)),
        "class_polygons": str(engine.final(CLASS_POLYGONS_NAME)) if params["polygons"] else None,
        "confidence_raster": str(engine.final(CONFIDENCE_NAME)) if params["confidence"] else None,
        "uncertainty_raster": str(engine.final(UNCERTAINTY_NAME)) if params["uncertainty"] else None,
        "polygons": engine.polygon_count,
        "width": int(window.width), "height": int(window.height), "tiles": len(tiles), "tile_px": tile_px,
        "overlap_px": overlap_px, "gsd_m": grid.gsd_m if grid else None,
        "chunks": len(chunks), "chunks_resumed": len(chunks) - len(todo), "tiles_resumed": done,
        "tile_predictions": predictions - done,
        "class_px": {c["name"]: int(counts[int(c["id"])]) for c in config.classes},
        "nodata_px": int(counts[CLASS_NODATA]),
        "device": provenance.get("device", ""),
        "provenance": provenance,
        "warnings": warnings,
        "layers": result_layers,
        "seconds": round(time.monotonic() - started_s, 2),
        **({"cluster": cluster_run} if cluster_run else {}),
    }


def context_normalisation(config: Any, src: rasterio.io.DatasetReader) -> BandNormalisation | None:
    """How a head with a band context scales the raster's bands (None without one); a raster with fewer
    bands than the head was trained on is refused."""
    if not config.band_context:
        return None
    bands = [int(b) for b in config.band_context["bands"]]
    if max(bands) > src.count:
        raise UserError(f"The head reads bands 1-{max(bands)} of its raster beside the backbone's features; this "
                        f"raster has {src.count}. Map a raster of the same sensor and bands, or train a head "
                        "without the band context (--no-band-context)")
    return BandNormalisation(tuple(bands), tuple(config.band_context["low"]), tuple(config.band_context["high"]))


def default_overlap(tile_px: int, grid: WorkingGrid | None) -> int:
    """A quarter tile; half a tile when the model works on finer pixels than the raster's. A tile model's
    output depends a little on where a pixel lies in its tile (zero padding reaches the whole tile at the
    UNet's coarsest level: the bundled backbone's confidence over a constant tile runs from 0.35 in the west
    to 0.77 in the east). The texture of real pixels hides it; upsampled pixels are smooth and it shows as
    stripes at the tile stride (0.23 peak to peak when blended at a quarter tile, 0.013 at half)."""
    if grid is not None and min(grid.zoom) > 1.0:
        return tile_px // 2
    return tile_px // 4


def area_normalisation(src: rasterio.io.DatasetReader, window: Window, bands: tuple[int, ...], config: Any,
                       per_area: bool) -> tuple[BandNormalisation, list[str]]:
    """The head's band normalisation, once the area's bands are checked against the statistics the head
    keeps of its training data (:mod:`.raster.band_check`: data of another scale is refused, much clipping
    is warned of); with ``per_area``, the area's own 2nd-98th percentiles instead."""
    sample = area_sample(src, window, bands)
    if per_area:
        if sample.shape[1] == 0:
            raise UserError("The area holds no valid pixel: every pixel is nodata or outside the area")
        data = sample.astype(np.float32)[:, None, :]
        return percentile_normalisation([(data, np.ones(data.shape[1:], dtype=bool))], bands), []
    warnings = check_bands((config.training or {}).get("band_statistics"), config.band_low, config.band_high,
                           sample, [src.dtypes[b - 1] for b in bands], bands)
    for warning in warnings:
        LOG.warning("%s", warning)
    return BandNormalisation(bands, tuple(config.band_low), tuple(config.band_high)), warnings


def default_batch_size(params: dict[str, Any]) -> int:
    """Tiles per model call when the user gives none: 16 on a GPU of this process (the predictor halves it
    when the GPU runs out of memory), else 4 (the CPU gains nothing from more, and a cluster's actors
    take batches in flight anyway)."""
    if not params.get("cluster") and torch.cuda.is_available():
        return 16
    return 4


def _device_name(predictor: TilePredictor) -> str:
    device = getattr(getattr(predictor, "tile_model", None), "device", None)
    return str(device) if device is not None else str(predictor.provenance.get("device", type(predictor).__name__))


class _ChunkedSegmentation:
    """The outputs of one segmentation: prediction rasters filled chunk by chunk (on the model's working
    grid, which is the raster's own without ``gsd_m``), then the native outputs, counts and polygons."""

    def __init__(self, src: rasterio.io.DatasetReader, window: Window, area: AreaOfInterest | None,
                 classes: list[dict[str, Any]], params: dict[str, Any]) -> None:
        self.src = src
        self.window = window
        self.area = area
        self.classes = classes
        self.params = params
        self.width, self.height = int(window.width), int(window.height)
        self.transform = src.window_transform(window)
        self.crs = src.crs
        self.class_ids = np.array([int(c["id"]) for c in classes], dtype=np.uint8)
        self.counts = np.zeros(256, dtype=np.int64)
        self.polygon_count = 0
        self.folder = Path(params["out"])
        self._partials: dict[str, Path] = {}
        #: The rasters the chunks are written into: key -> path.
        self._predicted: dict[str, Path] = {}
        self._grid: Any = None
        self._work_window = window
        self._work_area = area
        self._work_transform = self.transform

    def final(self, name: str) -> Path:
        return self.folder / name

    @property
    def _wants_confidence(self) -> bool:
        return bool(self.params["confidence"] or self.params["polygons"])

    def prepare(self, outputs: OutputFiles, grid: WorkingGrid | None, source: Any, work_window: Window,
                work_area: AreaOfInterest | None) -> None:
        """Name every temporary file: the outputs themselves on the native grid, scratch files otherwise."""
        self._grid, self._work_window, self._work_area = grid, work_window, work_area
        self._work_transform = source.window_transform(work_window)
        names = {"classes": CLASS_RASTER_NAME, "confidence": CONFIDENCE_NAME, "uncertainty": UNCERTAINTY_NAME}
        wanted = ["classes"] + (["confidence"] if self._wants_confidence else []) + \
            (["uncertainty"] if self.params["uncertainty"] else [])
        for key in wanted:
            if grid is None and (key != "confidence" or self.params["confidence"]):
                self._predicted[key] = self._partials[names[key]] = outputs.partial(names[key])
            else:
                self._predicted[key] = outputs.scratch(outputs.temporary_name(f"working-{key}.tif").name)

    def create(self, provenance: dict[str, Any]) -> None:
        """Empty prediction rasters (sparse: blocks are written once, by their chunk)."""
        width, height = int(self._work_window.width), int(self._work_window.height)
        args = (width, height, self._work_transform, self.crs)
        with open_class_raster(self._predicted["classes"], *args, self.classes, provenance):
            pass
        for key, description in (("confidence", "confidence (blended probability of the class)"),
                                 ("uncertainty", "uncertainty (entropy / log(classes))")):
            if key in self._predicted:
                with open_score_raster(self._predicted[key], *args, description, provenance):
                    pass

    def restore(self, store: ResumeStore, chunks: int) -> None:
        """The final rows a stopped run of this job kept in its resume store, into the prediction rasters."""
        names = [name for index in range(chunks) for name in store.chunk(index).strips]
        if not names:
            return
        with ExitStack() as files:
            datasets = {key: files.enter_context(rasterio.open(path, "r+")) for key, path in self._predicted.items()}
            for name in names:
                self._write_arrays(datasets, store.read(name))

    def predict(self, predictor: TilePredictor, source: Any, todo: list[tuple[int, Window, list[Window]]],
                normalisation: BandNormalisation, overlap_px: int, batch_size: int, store: ResumeStore,
                progress: Progress, done: int, total: int, predictions: int,
                tile_metadata: Any = None, context: BandNormalisation | None = None) -> None:
        """The remaining tiles of every chunk of ``todo`` through ``predictor``, blended, written, and kept in
        the resume store: the final rows as they come, the blending state after each row of tiles. A head
        that reads DiffusionSat's metadata per tile gets ``{"images", "metadata"}`` batches, one with a band
        context ``{"images", "bands"}`` (``bands`` scaled by ``context``), one with both all three."""
        batches_meta: deque[tuple[int, Window, list[Window], list[Window], list[np.ndarray], int]] = deque()

        def batches() -> Iterator[np.ndarray | dict[str, np.ndarray]]:
            # Runs in the predictor's reading thread, which alone reads ``source`` while it runs.
            for index, chunk, chunk_tiles in todo:
                for start in range(store.chunk(index).tiles, len(chunk_tiles), batch_size):
                    batch = chunk_tiles[start:start + batch_size]
                    images, valids, every_band = [], [], []
                    for tile in batch:
                        raw, valid = read_bands(source, tile, normalisation.bands)
                        if context is not None:
                            values, valid_all = read_bands(source, tile, context.bands)
                            valid &= valid_all
                            scaled = context.apply(values)
                            scaled[:, ~valid] = 0.0
                            every_band.append(scaled)
                        image = normalisation.apply(raw)
                        image[:, ~valid] = 0.0
                        images.append(image)
                        valids.append(valid)
                    batches_meta.append((index, chunk, chunk_tiles, batch, valids, start + len(batch)))
                    if tile_metadata is None and context is None:
                        yield np.stack(images)
                        continue
                    batch_dict = {"images": np.stack(images)}
                    if tile_metadata is not None:
                        batch_dict["metadata"] = tile_metadata(source, batch)
                    if context is not None:
                        batch_dict["bands"] = np.stack(every_band)
                    yield batch_dict

        outputs = predictor.map(batches())
        try:
            with ExitStack() as files:
                datasets = {key: files.enter_context(rasterio.open(path, "r+"))
                            for key, path in self._predicted.items()}
                accumulator: StripAccumulator | None = None
                current, since, row_tiles = -1, 0, 1
                strips: list[dict[str, np.ndarray]] = []
                for probabilities in outputs:
                    index, chunk, chunk_tiles, batch, valids, end = batches_meta.popleft()
                    progress.check()
                    if accumulator is None or index != current:
                        saved = store.chunk(index)
                        accumulator = StripAccumulator.restore(len(self.classes), chunk, store.read(saved.state)) \
                            if saved.state else StripAccumulator(len(self.classes), chunk)
                        current, since, strips = index, 0, []
                        row_tiles = sum(1 for t in chunk_tiles if t.row_off == chunk_tiles[0].row_off)
                    for tile, tile_scores, valid in zip(batch, probabilities, valids):
                        accumulator.add(tile, tile_scores, valid, blend_weights(valid.shape, overlap_px))
                        done += 1
                        progress.update(done, total, f"tile {done} of {predictions}")
                    since += len(batch)
                    following = chunk_tiles[end] if end < len(chunk_tiles) else None
                    row_end = finished_row(int(following.row_off) if following else None, chunk, BLOCK_PX)
                    strip = accumulator.pop(row_end)
                    if strip is not None:
                        arrays = self._strip_arrays(strip, chunk)
                        self._write_arrays(datasets, arrays)
                        strips.append(arrays)
                    if following is None:  # the chunk is complete
                        store.checkpoint(index, end, strips, None, done=True)
                        accumulator = None
                    elif since >= row_tiles:  # a row of tiles since the last checkpoint
                        store.checkpoint(index, end, strips, accumulator.state(), done=False)
                        since, strips = 0, []
        finally:
            outputs.close()  # on a cancel or an error, the reading stops here
        missing = [index for index, _, _ in todo if not store.chunk(index).done]
        if missing:
            raise RuntimeError(f"The predictor stopped before chunks {missing} were predicted")

    def _strip_arrays(self, strip: ScoreStrip, chunk: Window) -> dict[str, np.ndarray]:
        """Classes, confidence and uncertainty of a finished strip of a chunk, with its place in the work
        window (``row_off``, ``col_off``)."""
        row0 = strip.row_off - int(self._work_window.row_off)
        col0 = int(chunk.col_off) - int(self._work_window.col_off)
        probabilities = strip.probabilities()
        index = probabilities.argmax(axis=0)
        confidence = np.take_along_axis(probabilities, index[None], axis=0)[0]
        invalid = strip.invalid | (strip.weights == 0)
        if self._work_area is not None:
            strip_transform = self._work_transform @ rasterio.Affine.translation(col0, row0)
            invalid |= geometry_mask(self._work_area.geometries, invalid.shape, strip_transform)
        class_ids = self.class_ids[index]
        class_ids[invalid] = CLASS_NODATA
        confidence[invalid] = SCORE_NODATA
        arrays = {"row_off": np.array(row0, dtype=np.int64), "col_off": np.array(col0, dtype=np.int64),
                  "classes": class_ids}
        if "confidence" in self._predicted:
            arrays["confidence"] = confidence.astype(np.float32)
        if "uncertainty" in self._predicted:
            arrays["uncertainty"] = _normalised_entropy(probabilities, invalid)
        return arrays

    @staticmethod
    def _write_arrays(datasets: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        height, width = arrays["classes"].shape
        window = Window(int(arrays["col_off"]), int(arrays["row_off"]), width, height)
        for key, dst in datasets.items():
            dst.write(arrays[key], 1, window=window)

    def _to_native(self, outputs: OutputFiles, provenance: dict[str, Any], progress: Progress) -> None:
        """The working-grid predictions on the raster's grid, window by window: classes nearest, scores
        bilinear; pixels that are nodata in the raster or outside the area are nodata."""
        names = {"classes": CLASS_RASTER_NAME, "confidence": CONFIDENCE_NAME, "uncertainty": UNCERTAINTY_NAME}
        args = (self.width, self.height, self.transform, self.crs)
        bands = tuple(provenance["bands"])
        with ExitStack() as files:
            native: dict[str, Any] = {}
            warped: dict[str, Any] = {}
            for key, path in self._predicted.items():
                target = outputs.partial(names[key]) if key != "confidence" or self.params["confidence"] \
                    else outputs.scratch(outputs.temporary_name("native-confidence.tif").name)
                self._partials[names[key]] = target
                if key == "classes":
                    dst = open_class_raster(target, *args, self.classes, provenance)
                else:
                    dst = open_score_raster(target, *args, f"{key} (resampled from {self._grid.gsd_m:g} m)",
                                            provenance)
                native[key] = files.enter_context(dst)
                working = files.enter_context(rasterio.open(path))
                warped[key] = files.enter_context(WarpedVRT(
                    working, crs=self.crs, transform=self.transform, width=self.width, height=self.height,
                    resampling=Resampling.nearest if key == "classes" else Resampling.bilinear))
            for window in strip_windows(self.width, self.height, 4 * BLOCK_PX, CHUNK_PX):
                progress.check()
                class_ids = warped["classes"].read(1, window=window)
                source_window = Window(int(self.window.col_off) + window.col_off,
                                       int(self.window.row_off) + window.row_off, window.width, window.height)
                _, valid = read_bands(self.src, source_window, bands)
                invalid = ~valid
                if self.area is not None:
                    invalid |= geometry_mask(self.area.geometries, invalid.shape,
                                             rasterio.windows.transform(window, self.transform))
                class_ids[invalid] = CLASS_NODATA
                native["classes"].write(class_ids, 1, window=window)
                for key in ("confidence", "uncertainty"):
                    if key in warped:
                        scores = warped[key].read(1, window=window)
                        scores[class_ids == CLASS_NODATA] = SCORE_NODATA
                        native[key].write(scores, 1, window=window)

    def finish(self, outputs: OutputFiles, provenance: dict[str, Any], progress: Progress) -> list[dict[str, Any]]:
        """The native outputs (resampled back with ``gsd_m``), the class counts and polygons from the
        finished class raster, read back in strips; refuse an area without a valid pixel; the attribute
        table and the styles; the layers list (top to bottom) the plugin adds."""
        if self._grid is not None:
            self._to_native(outputs, provenance, progress)
            class_path = self._partials[CLASS_RASTER_NAME]
            confidence_path = self._partials.get(CONFIDENCE_NAME)
        else:
            class_path = self._predicted["classes"]
            confidence_path = self._predicted.get("confidence")
        polygons = None
        if self.params["polygons"]:
            polygons = PolygonLayerWriter(outputs.partial(CLASS_POLYGONS_NAME), self.crs, self.transform,
                                          self.classes, provenance)
        self._read_back(class_path, confidence_path, polygons, progress)
        if self.counts[CLASS_NODATA] == self.width * self.height:
            raise UserError("The area holds no valid pixel: every pixel is nodata or outside the area")
        classified = {int(c["id"]): int(self.counts[int(c["id"])]) for c in self.classes}
        write_attribute_table(class_path, self.classes, classified)
        write_style(outputs.partial(CLASS_STYLE_NAME), paletted_raster_qml(self.classes))
        layers = []
        if polygons is not None:
            self.polygon_count = polygons.count
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

    def _read_back(self, class_path: Path, confidence_path: Path | None, polygons: PolygonLayerWriter | None,
                   progress: Progress) -> None:
        """Counts, and polygons, of the finished class raster read in full-width strips of whole blocks."""
        rows = max(BLOCK_PX, READBACK_BYTES // (5 * self.width) // BLOCK_PX * BLOCK_PX)
        polygonizer = StripPolygonizer(self.transform, self.height) if polygons is not None else None
        with ExitStack() as files:
            classes = files.enter_context(rasterio.open(class_path))
            confidence = files.enter_context(rasterio.open(confidence_path)) \
                if polygonizer is not None and confidence_path is not None else None
            for window in strip_windows(self.width, self.height, rows):
                progress.check()
                class_ids = classes.read(1, window=window)
                self.counts += np.bincount(class_ids.ravel(), minlength=256)
                if polygonizer is not None and polygons is not None and confidence is not None:
                    scores = confidence.read(1, window=window)
                    polygons.add(polygonizer.add_strip(class_ids, np.where(class_ids == CLASS_NODATA, 0.0, scores),
                                                       int(window.row_off)))
        if polygonizer is not None and polygons is not None:
            polygons.add(polygonizer.finish())
            polygons.close()

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
