"""The ``prototypes`` job (flow 4): the geo-prototype map of the SkySense paper's Fig. 5, from any non-empty
subset of a high-resolution image, a Sentinel-2 and a Sentinel-1 series (:mod:`.skysense`).

Outputs: ``prototypes.tif`` (prototype index 0..N_p-1 of the pixel's region, uint8 or uint16 by N_p,
nodata the dtype's maximum, colour table from :func:`prototype_palette`, QML), ``prototype_similarity.tif``
(float32 cosine similarity to that prototype, eq. 11, nodata NaN): two files because the two bands have
different dtypes; ``prototype_similarities.tif`` (int16, the cosine similarity x 10000 to every
prototype of the cell's region, one band each, then the region index: what an identify click in QGIS
reads without torch); ``prototypes.json`` (regions seen, palette, per-prototype nearest class when a head
exists, how to read the similarities); ``regions.gpkg`` (the lat/lon cells of the regions, clipped to the
grid) when the area spans more than one region.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from ..errors import UserError
from ..inference.device import default_device
from ..inference.predictor import TilePredictor
from ..inference.resumable import ResumablePredictor
from ..models.skysense import SkySense
from ..models.skysense.loading import load_model
from ..models.skysense.pretraining import learn_prototypes
from ..models.skysense.prototype_map import (
    nearest_class_per_prototype,
    prototype_map_from_similarity,
    prototype_palette,
)
from ..progress import Progress
from ..raster.stack import InputStack
from ..raster.styles import paletted_raster_qml
from .skysense import (
    BLOCK_PX,
    OutputFiles,
    TileOutput,
    area_mask,
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

#: Tiles sampled for prototype learning (evenly over the area): memory stays bounded on large areas.
MAX_LEARN_TILES = 256


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
        if (valid & area_mask(geometries, stack, window)[None]).any():
            batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    if not batches:
        raise UserError("No tile of the area holds valid pixels to learn prototypes from")
    learn_prototypes(model, batches, epochs=max(1, epochs), progress=progress, seed=seed)
    return len(batches)


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
                    provenance = job_provenance("prototypes", loaded, params, stack, modalities, device, predictor)
                    provenance["learned_tiles"] = learned_tiles
                    result = _prototypes(params, progress, model, stack, geometries, files, provenance, predictor)
                finally:
                    predictor.close()
                result.update(cluster_run(predictor))
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
    index_dst = output_raster(files.partial("prototypes.tif"), stack, dtype, nodata, "prototype index", provenance)
    similarity_dst = output_raster(files.partial("prototype_similarity.tif"), stack, "float32", float("nan"),
                                   "cosine similarity to the prototype (eq. 11)", provenance)
    all_dst = None
    if params.get("similarities", True):
        all_dst = _similarities_raster(files.partial(SIMILARITIES_NAME), stack, per_region, provenance)
    regions: dict[int, np.ndarray] = {}
    try:
        index_dst.write_colormap(1, colour_table(palette, 256 if dtype == "uint8" else per_region + 1))
        with closing(map_tiles(stack, predictor, geometries, int(params.get("batch_size") or 4), progress)) as tiles:
            for tile in tiles:
                similarity = tile.outputs["prototype_similarity"].float()
                pmap = prototype_map_from_similarity(similarity, tile.outputs["region"])
                assignment = pmap.assignment[0].numpy()
                write_window(index_dst, assignment, tile, nodata)
                write_window(similarity_dst, pmap.similarity[0].numpy(), tile, np.nan)
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
