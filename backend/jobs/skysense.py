"""The SkySense jobs: ``classify`` (flow 3: a class map on the feature grid and one class per polygon) and
``prototypes`` (flow 4: the geo-prototype map of the SkySense paper's Fig. 5).

Both read any non-empty subset of a high-resolution image, a Sentinel-2 and a Sentinel-1 series onto one
grid (:mod:`backend.raster.stack`), run SkySense tile by tile with the tile centre's longitude and latitude
(which picks the prototype region), and write each tile's window into GeoTIFFs as it comes. Every output is
written under a temporary name and renamed when the job completes; a cancel or an error leaves no file.

Outputs:

- classify: ``classes.tif`` (uint8 class ids, nodata 255, colour table, ``CLASS_<id>`` tags, QML),
  ``confidence.tif`` (float32 probability of the class, nodata -1), with ``polygons`` ``classes.gpkg``
  (the input polygons and fields, plus class_id, class_name, probability and the top-k classes and
  probabilities of the polygon's pooled feature).
- prototypes: ``prototypes.tif`` (prototype index 0..N_p-1 of the pixel's region, uint8 or uint16 by N_p,
  nodata the dtype's maximum, colour table from :func:`prototype_palette`, QML), ``prototype_similarity.tif``
  (float32 cosine similarity to that prototype, eq. 11, nodata NaN): two files because the two bands have
  different dtypes; ``prototype_similarities.tif`` (int16, the cosine similarity x 10000 to every
  prototype of the cell's region, one band each, then the region index: what an identify click in QGIS
  reads without torch); ``prototypes.json`` (regions seen, palette, per-prototype nearest class when a head
  exists, how to read the similarities); ``regions.gpkg`` (the lat/lon cells of the regions, clipped to the
  grid) when the area spans more than one region.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from rasterio.windows import Window

from .. import __version__
from ..errors import UserError
from ..inference.device import default_device
from ..inference.executor import make_predictor
from ..inference.predictor import LocalPredictor, TilePredictor
from ..inference.resumable import ResumablePredictor
from ..inference.skysense_model import SkySenseTileModel, skysense_spec
from ..models.skysense import SkySense
from ..models.skysense.heads import classify_polygons, polygon_pool
from ..models.skysense.loading import LoadedModel, load_model
from ..models.skysense.pretraining import learn_prototypes
from ..models.skysense.prototype_map import (
    nearest_class_per_prototype,
    prototype_map_from_similarity,
    prototype_palette,
)
from ..progress import Progress
from ..raster.area import read_area
from ..raster.band_check import stack_band_warnings
from ..raster.journal import fingerprint, input_facts
from ..raster.resume import ResumeStore
from ..raster.stack import InputStack, ModalityInputs, common_grid, modality_inputs, open_stack, split_list
from ..raster.styles import categorized_polygons_qml, paletted_raster_qml, score_raster_qml

CLASS_NODATA = 255
SCORE_NODATA = -1.0
BLOCK_PX = 256
#: Tiles sampled for prototype learning (evenly over the area): memory stays bounded on large areas.
MAX_LEARN_TILES = 256


# -- inputs ---------------------------------------------------------------------------------------------
def gather_inputs(params: dict[str, Any], model: SkySense) -> list[ModalityInputs]:
    """The modalities the parameters give, checked against the model's encoders."""
    given = {"hr": split_list(params.get("hr")), "s2": split_list(params.get("s2")), "s1": split_list(params.get("s1"))}
    present = [m for m, paths in given.items() if paths]
    if not present:
        raise UserError("Give at least one input: a high-resolution image (hr), a Sentinel-2 series (s2) or a "
                        "Sentinel-1 series (s1)")
    lacking = [m for m in present if m not in model.config.encoders]
    if lacking:
        raise UserError(f"The model {model.config.name} has no encoder for {', '.join(lacking)}; it reads "
                        f"{', '.join(model.config.modalities)}")
    return [modality_inputs(m, given[m], model.config.encoders[m].bands, params.get(f"{m}_dates"),
                            params.get(f"{m}_bands")) for m in present]


def default_tile_px(model: SkySense) -> int:
    """The tile its head was trained on, else the Sentinel encoders' training size, else 64 grid cells."""
    if model.config.training.get("tile_px"):
        return int(model.config.training["tile_px"])
    for m in ("s2", "s1"):
        encoder = model.config.encoders.get(m)
        if encoder is not None and encoder.timm_kwargs.get("img_size"):
            return int(encoder.timm_kwargs["img_size"])
    return 64


def prepare_stack(params: dict[str, Any], model: SkySense) -> tuple[InputStack, list[ModalityInputs],
                                                                     list[dict[str, Any]] | None]:
    """Inputs on their common grid with normalisation computed, and the area's polygons in the grid's CRS."""
    modalities = gather_inputs(params, model)
    area = read_area(params["aoi"]) if params.get("aoi") else None
    grid = common_grid(modalities, area, float(params.get("grid_gsd_m") or 10.0))
    tile_px = int(params.get("tile_px") or default_tile_px(model))
    stack = open_stack(modalities, grid, tile_px)
    try:
        # A trained head's own normalisation first: training and prediction must see the same values (unless the
        # user asks for the area's own); then the statistics the weights were trained with (official checkpoints);
        # percentiles over the area for the rest. Data of another kind than the model's is refused.
        if params.get("rescale_per_area"):
            stack.compute_normalisation()
        else:
            missing = stack.set_normalisation(model.config.normalisation)
            statistics = {m: e.normalisation for m, e in model.config.encoders.items() if e.normalisation}
            stack.compute_normalisation(only=stack.set_statistics(statistics, only=missing))
            stack.band_warnings = stack_band_warnings(stack, model.config.normalisation,
                                                      (model.config.training or {}).get("band_statistics") or {})
    except BaseException:
        stack.__exit__(None, None, None)
        raise
    return stack, modalities, (list(area.to_crs(grid.crs).geometries) if area is not None else None)


def _area_mask(geometries: list[dict[str, Any]] | None, stack: InputStack, window: Window) -> np.ndarray:
    shape = (stack.tile_px, stack.tile_px)
    if geometries is None:
        return np.ones(shape, dtype=bool)
    transform = rasterio.windows.transform(window, stack.grid.transform)
    return rasterize([(g, 1) for g in geometries], out_shape=shape, transform=transform, fill=0,
                     dtype="uint8").astype(bool)


@dataclass
class TileOutput:
    window: Window  # the tile's window on the grid, cropped to the grid
    outputs: dict[str, Any]  # the model's outputs for this one sample (batch of 1 kept), as CPU tensors
    valid: np.ndarray  # (h, w) cells with data and inside the area, cropped like the window


@dataclass
class _BatchTiles:
    """What the driver keeps of a batch while the model runs it: its windows, their validity, the tiles
    sent (those with a valid cell) and how many of the grid's tiles are read up to it."""

    windows: list[Window]
    valid: np.ndarray
    keep: list[int]
    read: int


def tile_predictor(job: str, params: dict[str, Any], model: SkySense, model_ref: str, seed: int,
                   outputs: tuple[str, ...], progress: Progress | None = None) -> TilePredictor:
    """Where the tiles run: on the Ray cluster ``params["cluster"]`` names (its actors load ``model_ref``, a
    folder or configuration the workers can load as this process did), else in this process on the model
    already loaded (loading it again would hold it twice), with the tiles read ahead in a thread."""
    if params.get("cluster"):
        return make_predictor(skysense_spec(job, model_ref, seed, outputs), params, progress=progress)
    device = next(model.parameters()).device
    return LocalPredictor(SkySenseTileModel(model, device, outputs), prefetch=int(params.get("prefetch") or 2))


#: Changes whenever the SkySense jobs would send other batches for the same inputs (part of the fingerprint).
BATCHES_VERSION = 1
#: Parameters that change neither the batches nor the model's outputs.
_NOT_IN_FINGERPRINT = ("out", "overwrite", "fresh", "cluster", "save_model")


def resume_store(job: str, params: dict[str, Any], loaded: LoadedModel) -> ResumeStore:
    """The resume store of this job: the model's outputs batch by batch, kept until the job completes."""
    paths = [params.get("hr"), params.get("aoi"), params.get("polygons"), *split_list(params.get("s2")),
             *split_list(params.get("s1"))]
    facts = {"job": job, "batches": BATCHES_VERSION, "checkpoint_sha256": loaded.checkpoint_sha256,
             "params": {k: v for k, v in params.items() if k not in _NOT_IN_FINGERPRINT},
             "inputs": [input_facts(str(path)) for path in paths if path]}
    return ResumeStore(fingerprint(facts), params["out"], fresh=bool(params.get("fresh")))


def map_tiles(stack: InputStack, predictor: TilePredictor, geometries: list[dict[str, Any]] | None,
              batch_size: int, progress: Progress) -> Iterator[TileOutput]:
    """SkySense over the grid, tile by tile (batched), with the fused grid forced to the tile's cells. The
    batches are read in the predictor's reading thread (or fed to a cluster) while the caller writes the
    tiles before them; tiles without a valid cell are not sent."""
    tiles = stack.tiles()
    total = len(tiles)
    size = max(1, batch_size)
    sent: deque[_BatchTiles] = deque()  # per batch handed to the predictor, in order

    def batches() -> Iterator[dict[str, Any]]:
        # Runs in the predictor's reading thread, which alone reads the stack while it runs.
        for start in range(0, total, size):
            windows = tiles[start:start + size]
            inputs, valid = stack.read_batch(windows)
            valid &= np.stack([_area_mask(geometries, stack, w) for w in windows])
            keep = [i for i in range(len(windows)) if valid[i].any()]
            if keep:
                sent.append(_BatchTiles(windows, valid, keep, min(total, start + len(windows))))
                batch = {k: v[keep].numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                yield {**batch, "grid_hw": (stack.tile_px, stack.tile_px)}

    progress.update(0, total, f"0 of {total} tiles")
    outputs = predictor.map(batches())
    try:
        for out in outputs:
            meta = sent.popleft()
            for j, i in enumerate(meta.keep):
                w = meta.windows[i]
                height = min(stack.tile_px, stack.grid.height - int(w.row_off))
                width = min(stack.tile_px, stack.grid.width - int(w.col_off))
                # A cluster's results are read-only views of Ray's object store: copied (one tile) for torch.
                sample = {k: torch.from_numpy(v[j:j + 1] if v.flags.writeable else v[j:j + 1].copy())
                          for k, v in out.items()}
                yield TileOutput(Window(w.col_off, w.row_off, width, height), sample, meta.valid[i, :height, :width])
            progress.update(meta.read, total, f"{meta.read} of {total} tiles")
    finally:
        outputs.close()  # on a cancel or an error, the reading stops here
    progress.update(total, total, f"{total} of {total} tiles")


def learn_on_area(stack: InputStack, model: SkySense, geometries: list[dict[str, Any]] | None, epochs: int,
                  progress: Progress, device: torch.device, seed: int = 0) -> int:
    """Geo-Context Prototype Learning (eq. 11-13, Sinkhorn-Knopp assignment and EMA update) on the area's
    tiles with the network frozen; returns the number of tiles used."""
    tiles = stack.tiles()
    if len(tiles) > MAX_LEARN_TILES:
        tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, MAX_LEARN_TILES).round().astype(int)]
    batches = []
    for window in tiles:
        progress.check()
        inputs, valid = stack.read_batch([window])
        if (valid & _area_mask(geometries, stack, window)[None]).any():
            batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    if not batches:
        raise UserError("No tile of the area holds valid pixels to learn prototypes from")
    learn_prototypes(model, batches, epochs=max(1, epochs), progress=progress, seed=seed)
    return len(batches)


def area_regions(stack: InputStack, model: SkySense) -> list[int]:
    """The prototype regions of the area's tiles (the region of each tile's centre, as the model picks it)."""
    lonlat = torch.tensor([stack.grid.lonlat(w) for w in stack.tiles()], dtype=torch.float64)
    return sorted(set(model.regions.index(lonlat).tolist())) if len(lonlat) else []


def prototype_warnings(stack: InputStack, model: SkySense, use: str) -> list[str]:
    """A warning when the area has regions whose prototypes were never learned: no official file carries
    prototypes, so a converted checkpoint's are random until learned on the user's imagery."""
    unlearned = model.prototypes.unlearned(area_regions(stack, model))
    if not unlearned:
        return []
    shown = ", ".join(str(r) for r in unlearned[:8]) + (" ..." if len(unlearned) > 8 else "")
    return [f"The prototypes of region {shown} were never learned (no official file carries prototypes): {use} "
            "uses their initial, random values. Learn them on this area first: the prototypes task with 'learn "
            "prototypes on the area' (python -m backend prototypes ... --learn prototypes --save-model FOLDER), "
            "then use the saved model"]


# -- outputs --------------------------------------------------------------------------------------------
class OutputFiles:
    """Files written under temporary names in ``folder`` and renamed together by :meth:`commit`."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._partials: dict[Path, Path] = {}

    def partial(self, name: str) -> Path:
        final = self.folder / name
        partial = self.folder / f".partial-{os.getpid()}-{name}"
        self._partials[final] = partial
        return partial

    def commit(self) -> None:
        for final, partial in self._partials.items():
            if partial.exists():
                os.replace(partial, final)
        self._partials.clear()

    def discard(self) -> None:
        for partial in self._partials.values():
            for path in (partial, Path(f"{partial}.aux.xml")):
                path.unlink(missing_ok=True)
        self._partials.clear()
        if self._created and self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _raster(path: Path, stack: InputStack, dtype: str, nodata: float, description: str,
            provenance: dict[str, Any]) -> rasterio.io.DatasetWriter:
    grid = stack.grid
    dst = rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=dtype,
                        crs=grid.crs, transform=grid.transform, nodata=nodata, compress="deflate", tiled=True,
                        blockxsize=BLOCK_PX, blockysize=BLOCK_PX, BIGTIFF="IF_SAFER")
    dst.set_band_description(1, description)
    dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance, default=str))
    return dst


def _hex_rgba(colour: str) -> tuple[int, int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255


def _colormap(entries: list[dict[str, Any]], size: int) -> dict[int, tuple[int, int, int, int]]:
    colormap = {i: (0, 0, 0, 0) for i in range(size)}
    colormap.update({int(e["id"]): _hex_rgba(e["colour"]) for e in entries})
    return colormap


def _versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    return {"terrafuse": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": version("timm"), "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__}


def _provenance(job: str, loaded: LoadedModel, params: dict[str, Any], stack: InputStack,
                modalities: list[ModalityInputs], device: torch.device,
                predictor: TilePredictor | None = None) -> dict[str, Any]:
    grid = stack.grid
    cluster = {"cluster": predictor.provenance["cluster"]} if predictor and "cluster" in predictor.provenance else {}
    return {
        "job": job, "model": loaded.name, "model_config": loaded.model.config.name,
        "checkpoint_sha256": loaded.checkpoint_sha256, "parameters": dict(params),
        "inputs": {m.name: m.describe() for m in modalities},
        "normalisation": {n: s.normalisation.to_json() for n, s in stack.modalities.items() if s.normalisation},
        "date_encoding": {m: e.date_encoding for m, e in loaded.model.config.encoders.items()},
        "prototype_regions": loaded.model.prototypes.learned_regions,
        "grid": {"crs": grid.crs.to_string(), "gsd_m": grid.gsd_m, "width": grid.width, "height": grid.height,
                 "tile_px": stack.tile_px, "hr_factor": stack.modalities["hr"].factor if "hr" in stack.modalities
                 else None},
        "device": str((predictor.provenance.get("device") if predictor else None) or device), **cluster,
        "terrafuse": __version__, "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cluster_run(predictor: TilePredictor) -> dict[str, Any]:
    """``{"cluster": ...}``: what a cluster run did (actors lost, batches resubmitted); empty on one machine."""
    report = getattr(predictor, "report", None)
    return {"cluster": report()} if report is not None else {}


def _write_window(dst: rasterio.io.DatasetWriter, values: np.ndarray, tile: TileOutput, nodata: float) -> None:
    h, w = tile.valid.shape
    dst.write(np.where(tile.valid, values[:h, :w], nodata).astype(dst.dtypes[0]), 1, window=tile.window)


# -- classify -------------------------------------------------------------------------------------------
def run_classify(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Flow 3: per-cell classes of the fused feature F_fus (eq. 3) through the head, and per polygon the
    class of the polygon's mean feature (its top-k probabilities)."""
    loaded = load_model(params["model"], int(params.get("seed") or 0))
    model, device = loaded.model, default_device()
    if model.head is None:
        raise UserError(f"The model '{params['model']}' has no classifier head: train one from labels first "
                        "(the task 'Train a SkySense head from labels', or python -m backend train-skysense "
                        "--labels LABELS.gpkg --s2 ... --out HEAD), then classify with that folder as the model; "
                        "the prototypes task works without a head")
    classes = model.config.classes
    bad = [c for c in classes if not 0 <= int(c["id"]) < CLASS_NODATA]
    if bad:
        raise UserError(f"Class ids must lie in 0..254 to fit the class raster; {bad[0]['name']} has {bad[0]['id']}")
    class_ids = np.array([int(c["id"]) for c in classes], dtype=np.uint8)
    if not params.get("cluster"):  # on a cluster the actors hold the model; the driver only pools polygons
        model.to(device)
    polygons = _read_polygons(params["polygons"]) if params.get("polygons") else None
    stack, modalities, geometries = prepare_stack(params, model)
    with stack:
        region_warnings = prototype_warnings(stack, model, "the geo-context part of the features (eq. 3)")
        files = OutputFiles(params["out"])
        try:
            outputs = ("logits", "features") if polygons is not None else ("logits",)
            store = resume_store("classify", params, loaded)
            predictor = ResumablePredictor(tile_predictor("classify", params, model, params["model"],
                                                          int(params.get("seed") or 0), outputs, progress), store)
            try:
                provenance = _provenance("classify", loaded, params, stack, modalities, device, predictor)
                result = _classify(params, progress, model, stack, geometries, polygons, files, provenance,
                                   class_ids, predictor)
            finally:
                predictor.close()
            result.update(_cluster_run(predictor))
            files.commit()
        except BaseException:
            files.discard()
            raise
    store.remove()
    result.update({"provenance": provenance, "batches_resumed": predictor.resumed,
                   "warnings": loaded.warnings + stack.band_warnings + modality_warnings(model, modalities)
                   + region_warnings
                   + result.get("warnings", [])})
    return result


def modality_warnings(model: SkySense, modalities: list[ModalityInputs]) -> list[str]:
    """A head trained on other modalities than those given still runs (SkySense takes any subset), but its
    classes were learned on other fused features: say so."""
    trained = model.config.training.get("modalities")
    given = [m.name for m in modalities]
    if trained and sorted(trained) != sorted(given):
        return [f"The head was trained on {', '.join(trained)} and is applied to {', '.join(given)}: expect "
                "other results than its validation figures; train it on the same inputs"]
    return []


def _classify(params: dict[str, Any], progress: Progress, model: SkySense, stack: InputStack,
              geometries: list[dict[str, Any]] | None, polygons: PolygonLayer | None, files: OutputFiles,
              provenance: dict[str, Any], class_ids: np.ndarray, predictor: TilePredictor) -> dict[str, Any]:
    classes = model.config.classes
    out = Path(params["out"])
    counts = np.zeros(len(classes), dtype=np.int64)
    pooled = PolygonPooling(polygons.count, 2 * model.config.dim) if polygons is not None else None
    local_polygons = polygons.geometries_in(stack.grid.crs) if polygons is not None else None
    classes_dst = _raster(files.partial("classes.tif"), stack, "uint8", CLASS_NODATA, "class", provenance)
    confidence_dst = None
    if params.get("confidence"):
        confidence_dst = _raster(files.partial("confidence.tif"), stack, "float32", SCORE_NODATA,
                                 "confidence (probability of the class)", provenance)
    try:
        classes_dst.write_colormap(1, _colormap(classes, 256))
        classes_dst.update_tags(**{f"CLASS_{int(c['id'])}": c["name"] for c in classes})
        with closing(map_tiles(stack, predictor, geometries, int(params.get("batch_size") or 4), progress)) as tiles:
            for tile in tiles:
                probabilities = torch.softmax(tile.outputs["logits"][0].float(), dim=0).numpy()
                index = probabilities.argmax(axis=0)
                _write_window(classes_dst, class_ids[index], tile, CLASS_NODATA)
                h, w = tile.valid.shape
                counts += np.bincount(index[:h, :w][tile.valid], minlength=len(classes))
                if confidence_dst is not None:
                    _write_window(confidence_dst, probabilities.max(axis=0), tile, SCORE_NODATA)
                if pooled is not None and local_polygons is not None:
                    ids = rasterize(local_polygons, out_shape=(stack.tile_px, stack.tile_px), fill=0, dtype="int32",
                                    transform=rasterio.windows.transform(tile.window, stack.grid.transform))
                    ids[:h, :w][~tile.valid] = 0
                    ids[h:, :] = 0
                    ids[:, w:] = 0
                    pooled.add(tile.outputs["features"], torch.from_numpy(ids).long()[None])
    finally:
        classes_dst.close()
        if confidence_dst is not None:
            confidence_dst.close()
    (files.partial("classes.qml")).write_text(paletted_raster_qml(classes), encoding="utf-8")
    layers: list[dict[str, Any]] = []
    outputs = {"classes": str(out / "classes.tif")}
    warnings: list[str] = []
    if polygons is not None and pooled is not None:
        top_k = max(1, int(params.get("top_k") or 3))
        probabilities, top_p, top_i = pooled.classify(model, top_k)
        missing = polygons.write(files.partial("classes.gpkg"), classes, top_p, top_i, top_k)
        files.partial("classes_polygons.qml").write_text(categorized_polygons_qml(classes), encoding="utf-8")
        if missing:
            warnings.append(f"{missing} polygon(s) cover no grid cell with data: no class (a smaller grid_gsd_m helps)")
        outputs["polygons"] = str(out / "classes.gpkg")
        layers.append({"path": outputs["polygons"], "kind": "vector", "name": "SkySense classes (polygons)",
                       "qml": str(out / "classes_polygons.qml"), "visible": True})
    layers.append({"path": outputs["classes"], "kind": "raster", "name": "SkySense classes",
                   "qml": str(out / "classes.qml"), "visible": polygons is None})
    if confidence_dst is not None:
        files.partial("confidence.qml").write_text(score_raster_qml(), encoding="utf-8")
        outputs["confidence"] = str(out / "confidence.tif")
        layers.append({"path": outputs["confidence"], "kind": "raster", "name": "SkySense confidence",
                       "qml": str(out / "confidence.qml"), "visible": False})
    return {"outputs": outputs, "layers": layers, "warnings": warnings,
            "class_pixels": {c["name"]: int(n) for c, n in zip(classes, counts)},
            "grid": provenance["grid"]}


# -- polygons -------------------------------------------------------------------------------------------
class PolygonPooling:
    """Running sum of F_fus over each polygon's cells across tiles, so that the polygon's class comes from its
    mean feature (:func:`heads.polygon_pool` per tile, weighted by the cells each tile contributes)."""

    def __init__(self, count: int, channels: int) -> None:
        self.sums = torch.zeros(count, channels, dtype=torch.float64)
        self.cells = torch.zeros(count, dtype=torch.float64)

    def add(self, features: torch.Tensor, ids: torch.Tensor) -> None:
        count = self.cells.shape[0]
        means = polygon_pool(features.float(), ids, count).double()
        cells = torch.bincount(ids.flatten(), minlength=count + 1)[1:].double()
        self.sums += torch.nan_to_num(means) * cells[:, None]
        self.cells += cells

    def classify(self, model: SkySense, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities and top-k of each polygon's mean feature through the head (NaN rows: no cell)."""
        count = self.cells.shape[0]
        means = (self.sums / self.cells[:, None]).float()  # NaN where a polygon covers no cell
        features = means.T[None, :, None, :]  # (1, C, 1, N): each polygon's mean as one cell
        ids = torch.where(self.cells > 0, torch.arange(1, count + 1), 0)[None, None, :]
        if model.head is None:
            raise UserError("Polygons are classified by the model's head, and this model has none")
        device = next(model.head.parameters()).device
        with torch.inference_mode():
            results = classify_polygons(model.head, features.to(device), ids.to(device), count, top_k=top_k)
        return results[0].cpu(), results[1].cpu(), results[2].cpu()


@dataclass
class PolygonLayer:
    """The polygons to classify, with their fields, as read from the vector file."""

    meta: dict[str, Any]
    geometries: list[Any]  # shapely geometries, in the file's CRS
    fields: list[np.ndarray]

    @property
    def count(self) -> int:
        return len(self.geometries)

    def geometries_in(self, crs: rasterio.crs.CRS) -> list[tuple[dict[str, Any], int]]:
        """(GeoJSON-like geometry in ``crs``, 1-based id) pairs for rasterize."""
        import shapely
        from rasterio.warp import transform_geom

        source = rasterio.crs.CRS.from_user_input(self.meta["crs"])
        return [(transform_geom(source, crs, shapely.geometry.mapping(g)), i + 1)
                for i, g in enumerate(self.geometries)]

    def write(self, path: Path, classes: list[dict[str, Any]], top_p: torch.Tensor, top_i: torch.Tensor,
              top_k: int) -> int:
        """The polygons with their fields and the classes; returns how many have no class."""
        import pyogrio.raw
        import shapely

        count = self.count
        has = ~torch.isnan(top_p[:, 0]) & (top_p[:, 0] >= 0)
        ids = np.array([int(c["id"]) for c in classes])
        names = np.array([str(c["name"]) for c in classes], dtype=object)
        ours: dict[str, np.ndarray] = {}
        for k in range(top_k if top_p.shape[1] >= top_k else top_p.shape[1]):
            index = top_i[:, k].numpy()
            prob = top_p[:, k].double().numpy()
            ours[f"top{k + 1}_class"] = np.where(has.numpy(), names[index], None).astype(object)
            ours[f"top{k + 1}_probability"] = np.where(has.numpy(), prob, np.nan)
        first = top_i[:, 0].numpy()
        ours = {"class_id": np.where(has.numpy(), ids[first], -1).astype(np.int32),
                "class_name": np.where(has.numpy(), names[first], None).astype(object),
                "probability": ours["top1_probability"], **ours}
        keep = [(n, a) for n, a in zip(self.meta["fields"], self.fields) if n not in ours]
        fields = [n for n, _ in keep] + list(ours)
        data = [a for _, a in keep] + list(ours.values())
        mask = [None] * len(keep) + [None, ~has.numpy(), ~has.numpy()] + [~has.numpy()] * (len(ours) - 3)
        pyogrio.raw.write(str(path), shapely.to_wkb(np.asarray(self.geometries, dtype=object)), data, fields,
                          field_mask=mask, driver="GPKG", layer="classes", geometry_type="MultiPolygon",
                          promote_to_multi=True, crs=self.meta["crs"])
        return int(count - int(has.sum()))


def _read_polygons(path: str) -> PolygonLayer:
    import pyogrio
    import pyogrio.raw
    import shapely

    try:
        meta, _, wkb, fields = pyogrio.raw.read(path, read_geometry=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise UserError(f"Cannot read the polygons file '{path}': {exc}") from None
    if not meta.get("crs"):
        raise UserError(f"The polygons file '{path}' has no CRS; save it with one")
    geometries = shapely.from_wkb(wkb)
    keep = np.array([g is not None and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon")
                     for g in geometries], dtype=bool)
    if not keep.any():
        raise UserError(f"The polygons file '{path}' holds no polygon")
    return PolygonLayer(meta, [shapely.make_valid(g) for g in geometries[keep]], [f[keep] for f in fields])


# -- prototypes -----------------------------------------------------------------------------------------
def run_prototypes(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Flow 4 (Fig. 5): every cell's F_fus^mm assigned to the most similar prototype of its region by the
    cosine similarity of eq. 11; optionally the prototypes are first learned on the area (eq. 11-13)."""
    seed = int(params.get("seed") or 0)
    loaded = load_model(params["model"], seed)
    model, device = loaded.model.to(default_device()), default_device()
    stack, modalities, geometries = prepare_stack(params, model)
    warnings = list(loaded.warnings) + stack.band_warnings
    with stack:
        learned_tiles = 0
        if params.get("learn") == "prototypes":
            torch.manual_seed(seed)
            learned_tiles = learn_on_area(stack, model, geometries, int(params.get("epochs") or 5), progress, device,
                                          seed)
        else:
            warnings += prototype_warnings(stack, model, "the prototype map")
        files = OutputFiles(params["out"])
        # The learned prototypes live in this process only: a cluster's actors load them from a scratch copy
        # in the output folder (sent to the nodes with the job's other model files), removed after.
        learned = files.folder / f".learned-{os.getpid()}" if learned_tiles and params.get("cluster") else None
        try:
            try:
                if learned is not None:
                    model.save_pretrained(learned)
                store = resume_store("prototypes", params, loaded)
                predictor = ResumablePredictor(tile_predictor("prototypes", params, model,
                                                              str(learned or params["model"]), seed,
                                                              ("prototype_similarity", "region"), progress), store)
                try:
                    provenance = _provenance("prototypes", loaded, params, stack, modalities, device, predictor)
                    provenance["learned_tiles"] = learned_tiles
                    result = _prototypes(params, progress, model, stack, geometries, files, provenance, predictor)
                finally:
                    predictor.close()
                result.update(_cluster_run(predictor))
            finally:
                if learned is not None:
                    shutil.rmtree(learned, ignore_errors=True)
            if params.get("save_model"):
                progress.check()
                model.save_pretrained(params["save_model"])
                result["outputs"]["model"] = str(Path(params["save_model"]).resolve())
            files.commit()
        except BaseException:
            files.discard()
            raise
    store.remove()
    if learned_tiles == 0 and params.get("save_model"):
        warnings.append("save_model without learn=prototypes saves the model unchanged")
    result.update({"provenance": provenance, "warnings": warnings, "learned_tiles": learned_tiles,
                   "batches_resumed": predictor.resumed})
    return result


def _prototypes(params: dict[str, Any], progress: Progress, model: SkySense, stack: InputStack,
                geometries: list[dict[str, Any]] | None, files: OutputFiles,
                provenance: dict[str, Any], predictor: TilePredictor) -> dict[str, Any]:
    out = Path(params["out"])
    per_region = model.config.prototypes_per_region
    dtype, nodata = ("uint8", 255) if per_region < 255 else ("uint16", 65535)
    palette = [{"id": i, "name": f"prototype {i}", "colour": "#{:02x}{:02x}{:02x}".format(*rgb)}
               for i, rgb in enumerate(prototype_palette(per_region))]
    index_dst = _raster(files.partial("prototypes.tif"), stack, dtype, nodata, "prototype index", provenance)
    similarity_dst = _raster(files.partial("prototype_similarity.tif"), stack, "float32", float("nan"),
                             "cosine similarity to the prototype (eq. 11)", provenance)
    all_dst = None
    if params.get("similarities", True):
        all_dst = _similarities_raster(files.partial(SIMILARITIES_NAME), stack, per_region, provenance)
    regions: dict[int, np.ndarray] = {}
    try:
        index_dst.write_colormap(1, _colormap(palette, 256 if dtype == "uint8" else per_region + 1))
        with closing(map_tiles(stack, predictor, geometries, int(params.get("batch_size") or 4), progress)) as tiles:
            for tile in tiles:
                similarity = tile.outputs["prototype_similarity"].float()
                pmap = prototype_map_from_similarity(similarity, tile.outputs["region"])
                assignment = pmap.assignment[0].numpy()
                _write_window(index_dst, assignment, tile, nodata)
                _write_window(similarity_dst, pmap.similarity[0].numpy(), tile, np.nan)
                h, w = tile.valid.shape
                region = int(pmap.region[0])
                if all_dst is not None:
                    _write_similarities(all_dst, similarity[0].numpy(), region, tile)
                counts = np.bincount(assignment[:h, :w][tile.valid], minlength=per_region)
                regions[region] = regions.get(region, 0) + counts
    finally:
        index_dst.close()
        similarity_dst.close()
        if all_dst is not None:
            all_dst.close()
    files.partial("prototypes.qml").write_text(paletted_raster_qml(palette), encoding="utf-8")
    document = _prototype_document(model, regions, palette)
    outputs = {"prototypes": str(out / "prototypes.tif"), "similarity": str(out / "prototype_similarity.tif"),
               "json": str(out / "prototypes.json")}
    if all_dst is not None:
        outputs["similarities"] = str(out / SIMILARITIES_NAME)
        document["similarities"] = {"file": SIMILARITIES_NAME, "scale": SIMILARITY_SCALE,
                                    "nodata": SIMILARITY_NODATA, "region_band": per_region + 1,
                                    "bands": f"1..{per_region}: round(cosine similarity x {SIMILARITY_SCALE}) to "
                                             f"prototype 0..{per_region - 1} of the cell's region; "
                                             f"{per_region + 1}: the region"}
    files.partial("prototypes.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    layers = [
        {"path": outputs["prototypes"], "kind": "raster", "name": "SkySense prototypes",
         "qml": str(out / "prototypes.qml"), "visible": True},
        {"path": outputs["similarity"], "kind": "raster", "name": "SkySense prototype similarity", "visible": False},
    ]
    if len(regions) > 1:
        outputs["regions"] = str(out / "regions.gpkg")
        _write_regions(files.partial("regions.gpkg"), model, sorted(regions), stack)
        files.partial("regions.qml").write_text(REGIONS_QML, encoding="utf-8")
        layers.insert(0, {"path": outputs["regions"], "kind": "vector", "name": "SkySense prototype regions",
                          "qml": str(out / "regions.qml"), "visible": True})
    return {"outputs": outputs, "layers": layers, "regions": [r["region"] for r in document["regions"]],
            "region_count": int(np.prod(model.config.region_grid)), "grid": provenance["grid"]}


#: The prototype regions as dashed outlines, labelled with their index (a QGIS style, written by hand as the
#: other QML: the backend never imports qgis).
REGIONS_QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology|Labeling">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="0,0,0,0"/><prop k="style" v="no"/><prop k="outline_color" v="20,20,20,255"/>
          <prop k="outline_style" v="dash"/><prop k="outline_width" v="0.6"/><prop k="outline_width_unit" v="MM"/>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="'region ' || &quot;region&quot;" isExpression="1" fontSize="9" textColor="20,20,20,255"/>
      <placement placement="1"/>
    </settings>
  </labeling>
</qgis>
"""

#: The per-prototype similarities an identify click reads: int16 scaled by SIMILARITY_SCALE (half the bytes of
#: float32 for N_p bands, and 1e-4 is finer than any decision taken on a cosine similarity).
SIMILARITIES_NAME = "prototype_similarities.tif"
SIMILARITY_SCALE = 10000
SIMILARITY_NODATA = -32768


def _similarities_raster(path: Path, stack: InputStack, per_region: int,
                         provenance: dict[str, Any]) -> rasterio.io.DatasetWriter:
    grid = stack.grid
    dst = rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=per_region + 1,
                        dtype="int16", crs=grid.crs, transform=grid.transform, nodata=SIMILARITY_NODATA,
                        compress="deflate", predictor=2, tiled=True, blockxsize=BLOCK_PX, blockysize=BLOCK_PX,
                        interleave="pixel", BIGTIFF="IF_SAFER")
    for i in range(per_region):
        dst.set_band_description(i + 1, f"prototype {i} (cosine similarity x {SIMILARITY_SCALE})")
    dst.set_band_description(per_region + 1, "region")
    dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance, default=str), SIMILARITY_SCALE=str(SIMILARITY_SCALE))
    return dst


def _write_similarities(dst: rasterio.io.DatasetWriter, similarity: np.ndarray, region: int,
                        tile: TileOutput) -> None:
    """One tile's similarities to every prototype (N_p, h, w) and its region, nodata outside the valid cells."""
    h, w = tile.valid.shape
    scaled = np.rint(np.clip(similarity[:, :h, :w], -1.0, 1.0) * SIMILARITY_SCALE).astype(np.int16)
    values = np.concatenate([scaled, np.full((1, h, w), region, dtype=np.int16)])
    dst.write(np.where(tile.valid[None], values, SIMILARITY_NODATA).astype(np.int16), window=tile.window)


def _write_regions(path: Path, model: SkySense, regions: list[int], stack: InputStack) -> None:
    """The prototype regions the area spans (their lat/lon cells, clipped to the grid), for the map."""
    import pyogrio.raw
    import shapely
    from rasterio.warp import transform_bounds

    area = shapely.box(*transform_bounds(stack.grid.crs, "EPSG:4326", *stack.grid.bounds, densify_pts=21))
    cells = [shapely.box(*model.regions.bounds(r)).intersection(area) for r in regions]
    bounds = [model.regions.bounds(r) for r in regions]
    fields = [np.array(regions, dtype=np.int32)] + [np.array([b[k] for b in bounds]) for k in range(4)]
    pyogrio.raw.write(str(path), shapely.to_wkb(np.asarray(cells, dtype=object)), fields,
                      ["region", "west", "south", "east", "north"], driver="GPKG", layer="regions",
                      geometry_type="Polygon", crs="EPSG:4326")


def _prototype_document(model: SkySense, regions: dict[int, np.ndarray],
                        palette: list[dict[str, Any]]) -> dict[str, Any]:
    """What a click on the map needs: per region seen, each prototype's colour, pixel count and (with a
    head) nearest class and its probability."""
    head = model.head
    document: dict[str, Any] = {"format": "terrafuse-prototype-map", "format_version": 1,
                                "prototypes_per_region": model.config.prototypes_per_region,
                                "region_grid": list(model.config.region_grid),
                                "region_count": int(np.prod(model.config.region_grid)),
                                "index_band": "prototypes.tif band 1 (0-based prototype of the cell's region)",
                                "similarity_band": "prototype_similarity.tif band 1",
                                "palette": [p["colour"] for p in palette], "classes": model.config.classes,
                                "regions": []}
    for region, counts in sorted(regions.items()):
        entries = [{"index": i, "colour": palette[i]["colour"], "pixels": int(counts[i])}
                   for i in range(len(palette))]
        if head is not None:
            with torch.inference_mode():
                nearest, probability = nearest_class_per_prototype(
                    model.prototypes.prototypes[region].float().cpu(), head.class_weights.float().cpu(),
                    head.linear.bias.float().cpu())
            for entry, c, p in zip(entries, nearest.tolist(), probability.tolist()):
                cls = model.config.classes[c]
                entry["nearest_class"] = {"id": int(cls["id"]), "name": cls["name"], "probability": float(p)}
        west, south, east, north = model.regions.bounds(region)
        document["regions"].append({"region": region, "bounds_deg": [west, south, east, north],
                                    "prototypes": entries})
    return document
