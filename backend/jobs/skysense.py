"""What the SkySense jobs (``classify``, ``prototypes``, ``train-skysense``) share: their inputs on one grid,
the model run tile by tile, and their output files.

They read any non-empty subset of a high-resolution image, a Sentinel-2 and a Sentinel-1 series onto one
grid (:mod:`backend.raster.stack`), run SkySense tile by tile with the tile centre's longitude and latitude
(which picks the prototype region), and write each tile's window into GeoTIFFs as it comes. Every output is
written under a temporary name and renamed when the job completes; a cancel or an error leaves no file.
The jobs themselves: :mod:`.classify`, :mod:`.prototypes`, :mod:`.train_skysense`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from rasterio.windows import Window

from .. import __version__
from ..errors import UserError
from ..inference.executor import make_predictor
from ..inference.predictor import LocalPredictor, TilePredictor
from ..inference.skysense_model import SkySenseTileModel, skysense_spec
from ..models.skysense import SkySense
from ..models.skysense.loading import LoadedModel
from ..progress import Progress
from ..raster.area import read_area
from ..raster.band_check import stack_band_warnings
from ..raster.journal import fingerprint, input_facts
from ..raster.resume import ResumeStore
from ..raster.stack import (
    InputStack,
    ModalityInputs,
    common_grid,
    default_grid_gsd_m,
    missing_band_warnings,
    modality_inputs,
    open_stack,
    split_list,
)
from .info import package_version

CLASS_NODATA = 255
SCORE_NODATA = -1.0
BLOCK_PX = 256


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
                            params.get(f"{m}_bands"), model.config.encoders[m].band_mask) for m in present]


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
    grid = common_grid(modalities, area, default_grid_gsd_m(params, modalities))
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
        stack.band_warnings += missing_band_warnings(modalities)
    except BaseException:
        stack.__exit__(None, None, None)
        raise
    return stack, modalities, (list(area.to_crs(grid.crs).geometries) if area is not None else None)


def area_mask(geometries: list[dict[str, Any]] | None, stack: InputStack, window: Window) -> np.ndarray:
    """The cells of a tile inside the area's polygons (all of them without an area)."""
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
            valid &= np.stack([area_mask(geometries, stack, w) for w in windows])
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


def output_raster(path: Path, stack: InputStack, dtype: str, nodata: float, description: str,
                  provenance: dict[str, Any]) -> rasterio.io.DatasetWriter:
    """A one-band tiled GeoTIFF on the grid, open for writing window by window, with the job's provenance."""
    grid = stack.grid
    dst = rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=dtype,
                        crs=grid.crs, transform=grid.transform, nodata=nodata, compress="deflate", tiled=True,
                        blockxsize=BLOCK_PX, blockysize=BLOCK_PX, BIGTIFF="IF_SAFER")
    dst.set_band_description(1, description)
    dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance, default=str))
    return dst


def _hex_rgba(colour: str) -> tuple[int, int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255


def colour_table(entries: list[dict[str, Any]], size: int) -> dict[int, tuple[int, int, int, int]]:
    """A raster's colour table of ``size`` entries from ``{"id", "colour": "#rrggbb"}`` entries (others clear)."""
    colormap = {i: (0, 0, 0, 0) for i in range(size)}
    colormap.update({int(e["id"]): _hex_rgba(e["colour"]) for e in entries})
    return colormap


def _versions() -> dict[str, str]:
    return {"terrafuse": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": package_version("timm"), "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__}


def job_provenance(job: str, loaded: LoadedModel, params: dict[str, Any], stack: InputStack,
                   modalities: list[ModalityInputs], device: torch.device,
                   predictor: TilePredictor | None = None) -> dict[str, Any]:
    """What every output of a SkySense job records: the model, the parameters, the inputs, the grid, versions."""
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


def cluster_run(predictor: TilePredictor) -> dict[str, Any]:
    """``{"cluster": ...}``: what a cluster run did (actors lost, batches resubmitted); empty on one machine."""
    report = getattr(predictor, "report", None)
    return {"cluster": report()} if report is not None else {}


def write_window(dst: rasterio.io.DatasetWriter, values: np.ndarray, tile: TileOutput, nodata: float) -> None:
    """One tile's values into its window of ``dst``, ``nodata`` outside its valid cells."""
    h, w = tile.valid.shape
    dst.write(np.where(tile.valid, values[:h, :w], nodata).astype(dst.dtypes[0]), 1, window=tile.window)
