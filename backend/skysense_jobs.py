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
  different dtypes; ``prototypes.json`` (regions seen, palette, per-prototype nearest class when a head
  exists).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from rasterio.windows import Window

from . import __version__
from .errors import UserError
from .models.skysense import SkySense, create_skysense, list_skysense
from .models.skysense.heads import classify_polygons, polygon_pool
from .models.skysense.model import WEIGHTS_NAME
from .models.skysense.pretraining import learn_prototypes
from .models.skysense.prototype_map import nearest_class_per_prototype, prototype_map_from_similarity, prototype_palette
from .progress import Progress
from .raster.area import read_area
from .raster.stack import InputStack, ModalityInputs, common_grid, modality_inputs, open_stack, split_list
from .raster.styles import categorized_polygons_qml, paletted_raster_qml, score_raster_qml

CLASS_NODATA = 255
SCORE_NODATA = -1.0
BLOCK_PX = 256
#: Tiles sampled for prototype learning (evenly over the area): memory stays bounded on large areas.
MAX_LEARN_TILES = 256


# -- model ----------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: SkySense
    name: str
    checkpoint_sha256: str | None
    warnings: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(spec: str, seed: int) -> LoadedModel:
    """A SkySense folder (``from_pretrained``) or a registered configuration built with random weights."""
    folder = Path(spec)
    if folder.is_dir():
        model = SkySense.from_pretrained(folder)
        return LoadedModel(model, str(folder.resolve()), _sha256(folder / WEIGHTS_NAME), [])
    if spec in list_skysense():
        torch.manual_seed(seed)
        model = create_skysense(spec).eval()
        return LoadedModel(model, spec, None, [f"The model '{spec}' was built with random weights: its outputs show "
                                               "the pipeline, not land cover; load a trained SkySense folder"])
    raise UserError(f"The model '{spec}' is neither a SkySense folder nor a known configuration "
                    f"({', '.join(list_skysense())})")


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
    """The Sentinel encoders' training size when the model has one, else 64 grid cells."""
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
        stack.compute_normalisation()
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
    outputs: dict[str, Any]  # the model's outputs for this one sample (batch of 1 kept)
    valid: np.ndarray  # (h, w) cells with data and inside the area, cropped like the window


def map_tiles(stack: InputStack, model: SkySense, geometries: list[dict[str, Any]] | None, batch_size: int,
              progress: Progress, device: torch.device) -> Iterator[TileOutput]:
    """SkySense over the grid, tile by tile (batched), with the fused grid forced to the tile's cells."""
    tiles = stack.tiles()
    total = len(tiles)
    progress.update(0, total, f"0 of {total} tiles")
    for start in range(0, total, max(1, batch_size)):
        windows = tiles[start:start + max(1, batch_size)]
        inputs, valid = stack.read_batch(windows)
        valid &= np.stack([_area_mask(geometries, stack, w) for w in windows])
        keep = [i for i in range(len(windows)) if valid[i].any()]
        if keep:
            batch = {k: v[keep].to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with torch.inference_mode():
                out = model(batch, grid_hw=(stack.tile_px, stack.tile_px))
            for j, i in enumerate(keep):
                w = windows[i]
                height = min(stack.tile_px, stack.grid.height - int(w.row_off))
                width = min(stack.tile_px, stack.grid.width - int(w.col_off))
                sample = {k: (v[j:j + 1].cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
                yield TileOutput(Window(w.col_off, w.row_off, width, height), sample, valid[i, :height, :width])
        progress.update(min(total, start + len(windows)), total, f"{min(total, start + len(windows))} of {total} tiles")


def learn_on_area(stack: InputStack, model: SkySense, geometries: list[dict[str, Any]] | None, epochs: int,
                  progress: Progress, device: torch.device) -> int:
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
    learn_prototypes(model, batches, epochs=max(1, epochs), progress=progress)
    return len(batches)


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
                modalities: list[ModalityInputs], device: torch.device) -> dict[str, Any]:
    grid = stack.grid
    return {
        "job": job, "model": loaded.name, "model_config": loaded.model.config.name,
        "checkpoint_sha256": loaded.checkpoint_sha256, "parameters": dict(params),
        "inputs": {m.name: m.describe() for m in modalities},
        "normalisation": {n: s.normalisation.to_json() for n, s in stack.modalities.items() if s.normalisation},
        "grid": {"crs": grid.crs.to_string(), "gsd_m": grid.gsd_m, "width": grid.width, "height": grid.height,
                 "tile_px": stack.tile_px, "hr_factor": stack.modalities["hr"].factor if "hr" in stack.modalities
                 else None},
        "device": str(device), "terrafuse": __version__, "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_window(dst: rasterio.io.DatasetWriter, values: np.ndarray, tile: TileOutput, nodata: float) -> None:
    h, w = tile.valid.shape
    dst.write(np.where(tile.valid, values[:h, :w], nodata).astype(dst.dtypes[0]), 1, window=tile.window)


# -- classify -------------------------------------------------------------------------------------------
def run_classify(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Flow 3: per-cell classes of the fused feature F_fus (eq. 3) through the head, and per polygon the
    class of the polygon's mean feature (its top-k probabilities)."""
    loaded = load_model(params["model"], int(params.get("seed") or 0))
    model, device = loaded.model, _device()
    if model.head is None:
        raise UserError(f"The model '{params['model']}' has no classifier head; choose a SkySense folder with a "
                        "trained head (the prototypes job works without one)")
    classes = model.config.classes
    bad = [c for c in classes if not 0 <= int(c["id"]) < CLASS_NODATA]
    if bad:
        raise UserError(f"Class ids must lie in 0..254 to fit the class raster; {bad[0]['name']} has {bad[0]['id']}")
    class_ids = np.array([int(c["id"]) for c in classes], dtype=np.uint8)
    model.to(device)
    polygons = _read_polygons(params["polygons"]) if params.get("polygons") else None
    stack, modalities, geometries = prepare_stack(params, model)
    with stack:
        provenance = _provenance("classify", loaded, params, stack, modalities, device)
        files = OutputFiles(params["out"])
        try:
            result = _classify(params, progress, model, stack, geometries, polygons, files, provenance, class_ids)
            files.commit()
        except BaseException:
            files.discard()
            raise
    result.update({"provenance": provenance, "warnings": loaded.warnings + result.get("warnings", [])})
    return result


def _classify(params: dict[str, Any], progress: Progress, model: SkySense, stack: InputStack,
              geometries: list[dict[str, Any]] | None, polygons: PolygonLayer | None, files: OutputFiles,
              provenance: dict[str, Any], class_ids: np.ndarray) -> dict[str, Any]:
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
        for tile in map_tiles(stack, model, geometries, int(params.get("batch_size") or 4), progress,
                              next(model.parameters()).device):
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
        with torch.inference_mode():
            return classify_polygons(model.head, features, ids, count, top_k=top_k)


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
    model, device = loaded.model.to(_device()), _device()
    stack, modalities, geometries = prepare_stack(params, model)
    warnings = list(loaded.warnings)
    with stack:
        learned_tiles = 0
        if params.get("learn") == "prototypes":
            torch.manual_seed(seed)
            learned_tiles = learn_on_area(stack, model, geometries, int(params.get("epochs") or 5), progress, device)
        provenance = _provenance("prototypes", loaded, params, stack, modalities, device)
        provenance["learned_tiles"] = learned_tiles
        files = OutputFiles(params["out"])
        try:
            result = _prototypes(params, progress, model, stack, geometries, files, provenance)
            if params.get("save_model"):
                progress.check()
                model.save_pretrained(params["save_model"])
                result["outputs"]["model"] = str(Path(params["save_model"]).resolve())
            files.commit()
        except BaseException:
            files.discard()
            raise
    if learned_tiles == 0 and params.get("save_model"):
        warnings.append("save_model without learn=prototypes saves the model unchanged")
    result.update({"provenance": provenance, "warnings": warnings, "learned_tiles": learned_tiles})
    return result


def _prototypes(params: dict[str, Any], progress: Progress, model: SkySense, stack: InputStack,
                geometries: list[dict[str, Any]] | None, files: OutputFiles,
                provenance: dict[str, Any]) -> dict[str, Any]:
    out = Path(params["out"])
    per_region = model.config.prototypes_per_region
    dtype, nodata = ("uint8", 255) if per_region < 255 else ("uint16", 65535)
    palette = [{"id": i, "name": f"prototype {i}", "colour": "#{:02x}{:02x}{:02x}".format(*rgb)}
               for i, rgb in enumerate(prototype_palette(per_region))]
    index_dst = _raster(files.partial("prototypes.tif"), stack, dtype, nodata, "prototype index", provenance)
    similarity_dst = _raster(files.partial("prototype_similarity.tif"), stack, "float32", float("nan"),
                             "cosine similarity to the prototype (eq. 11)", provenance)
    regions: dict[int, np.ndarray] = {}
    try:
        index_dst.write_colormap(1, _colormap(palette, 256 if dtype == "uint8" else per_region + 1))
        for tile in map_tiles(stack, model, geometries, int(params.get("batch_size") or 4), progress,
                              next(model.parameters()).device):
            pmap = prototype_map_from_similarity(tile.outputs["prototype_similarity"].float(), tile.outputs["region"])
            assignment = pmap.assignment[0].numpy()
            _write_window(index_dst, assignment, tile, nodata)
            _write_window(similarity_dst, pmap.similarity[0].numpy(), tile, np.nan)
            h, w = tile.valid.shape
            region = int(pmap.region[0])
            counts = np.bincount(assignment[:h, :w][tile.valid], minlength=per_region)
            regions[region] = regions.get(region, 0) + counts
    finally:
        index_dst.close()
        similarity_dst.close()
    files.partial("prototypes.qml").write_text(paletted_raster_qml(palette), encoding="utf-8")
    document = _prototype_document(model, regions, palette)
    files.partial("prototypes.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    outputs = {"prototypes": str(out / "prototypes.tif"), "similarity": str(out / "prototype_similarity.tif"),
               "json": str(out / "prototypes.json")}
    layers = [
        {"path": outputs["prototypes"], "kind": "raster", "name": "SkySense prototypes",
         "qml": str(out / "prototypes.qml"), "visible": True},
        {"path": outputs["similarity"], "kind": "raster", "name": "SkySense prototype similarity", "visible": False},
    ]
    return {"outputs": outputs, "layers": layers, "regions": [r["region"] for r in document["regions"]],
            "grid": provenance["grid"]}


def _prototype_document(model: SkySense, regions: dict[int, np.ndarray],
                        palette: list[dict[str, Any]]) -> dict[str, Any]:
    """What a click on the map needs: per region seen, each prototype's colour, pixel count and (with a
    head) nearest class and its probability."""
    head = model.head
    document: dict[str, Any] = {"format": "terrafuse-prototype-map", "format_version": 1,
                                "prototypes_per_region": model.config.prototypes_per_region,
                                "region_grid": list(model.config.region_grid),
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
