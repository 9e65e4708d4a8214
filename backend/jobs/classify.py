"""The ``classify`` job (flow 3): a class map on the feature grid and one class per polygon, from any
non-empty subset of a high-resolution image, a Sentinel-2 and a Sentinel-1 series (:mod:`.skysense`).

Outputs: ``classes.tif`` (uint8 class ids, nodata 255, colour table, ``CLASS_<id>`` tags, QML),
``confidence.tif`` (float32 probability of the class, nodata -1), with ``polygons`` ``classes.gpkg``
(the input polygons and fields, plus class_id, class_name, probability and the top-k classes and
probabilities of the polygon's pooled feature).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize

from ..errors import UserError
from ..inference.device import default_device
from ..inference.predictor import TilePredictor
from ..inference.resumable import ResumablePredictor
from ..models.skysense import SkySense
from ..models.skysense.heads import classify_polygons, polygon_pool
from ..models.skysense.loading import load_model
from ..progress import Progress
from ..raster.stack import InputStack, ModalityInputs
from ..raster.styles import categorized_polygons_qml, paletted_raster_qml, score_raster_qml
from .skysense import (
    CLASS_NODATA,
    SCORE_NODATA,
    OutputFiles,
    cluster_run,
    colour_table,
    job_provenance,
    map_tiles,
    output_raster,
    prepare_stack,
    prototype_warnings,
    resume_store,
    tile_predictor,
    write_window,
)


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
            outputs = ("logits",)
            if polygons is not None:  # a head with a band context classifies a polygon's mean context too
                outputs += ("features", "band_context") if model.band_branch is not None else ("features",)
            store = resume_store("classify", params, loaded)
            predictor = ResumablePredictor(tile_predictor("classify", params, model, params["model"],
                                                          int(params.get("seed") or 0), outputs, progress), store)
            try:
                provenance = job_provenance("classify", loaded, params, stack, modalities, device, predictor)
                result = _classify(params, progress, model, stack, geometries, polygons, files, provenance,
                                   class_ids, predictor)
            finally:
                predictor.close()
            result.update(cluster_run(predictor))
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
    pooled_chs = 2 * model.config.dim + (model.band_branch.in_chs if model.band_branch is not None else 0)
    pooled = PolygonPooling(polygons.count, pooled_chs) if polygons is not None else None
    local_polygons = polygons.geometries_in(stack.grid.crs) if polygons is not None else None
    classes_dst = output_raster(files.partial("classes.tif"), stack, "uint8", CLASS_NODATA, "class", provenance)
    confidence_dst = None
    if params.get("confidence"):
        confidence_dst = output_raster(files.partial("confidence.tif"), stack, "float32", SCORE_NODATA,
                                       "confidence (probability of the class)", provenance)
    try:
        classes_dst.write_colormap(1, colour_table(classes, 256))
        classes_dst.update_tags(**{f"CLASS_{int(c['id'])}": c["name"] for c in classes})
        with closing(map_tiles(stack, predictor, geometries, int(params.get("batch_size") or 4), progress)) as tiles:
            for tile in tiles:
                probabilities = torch.softmax(tile.outputs["logits"][0].float(), dim=0).numpy()
                index = probabilities.argmax(axis=0)
                write_window(classes_dst, class_ids[index], tile, CLASS_NODATA)
                h, w = tile.valid.shape
                counts += np.bincount(index[:h, :w][tile.valid], minlength=len(classes))
                if confidence_dst is not None:
                    write_window(confidence_dst, probabilities.max(axis=0), tile, SCORE_NODATA)
                if pooled is not None and local_polygons is not None:
                    ids = rasterize(local_polygons, out_shape=(stack.tile_px, stack.tile_px), fill=0, dtype="int32",
                                    transform=rasterio.windows.transform(tile.window, stack.grid.transform))
                    ids[:h, :w][~tile.valid] = 0
                    ids[h:, :] = 0
                    ids[:, w:] = 0
                    pooled.add(_pooled_channels(tile.outputs), torch.from_numpy(ids).long()[None])
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
def _pooled_channels(outputs: dict[str, Any]) -> torch.Tensor:
    """What a polygon's class is read from: F_fus, followed by the band context when the head has one."""
    features = torch.as_tensor(outputs["features"])
    if "band_context" in outputs:
        features = torch.cat([features, torch.as_tensor(outputs["band_context"])], dim=1)
    return features


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
            results = classify_polygons(model.head, features.to(device), ids.to(device), count, top_k=top_k,
                                        band_branch=model.band_branch)
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
