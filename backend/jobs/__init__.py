"""The job registry: every capability is defined once, as a name, a typed parameter set and a
``run(params, progress) -> result`` function.

The command line (:mod:`backend.__main__`), the worker (:mod:`backend.worker`) and the plugin's
Processing algorithms are all generated from these specs. This module uses the standard library
only: the plugin imports it to build its algorithms without pulling in numpy or torch, and each
job's function is imported lazily, the first time the job runs, from its module in this package
(``backend.jobs.<job>``: one module per job or family of jobs; docs/architecture.md, "Layers of the backend").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError

#: Parameter kinds. Paths travel as strings; pixels never travel through the pipe.
PARAM_KINDS = (
    "raster",  # path of a raster file GDAL reads
    "vector",  # path of a vector file GDAL reads (areas, labels)
    "file",  # any input file
    "folder",  # an input folder (a saved head, a model)
    "output_folder",  # a folder the job writes into
    "output_file",  # a file the job writes
    "str",
    "int",
    "float",
    "bool",
    "choice",
)


#: Where a parameter sits in a task's form: the few a user sets for the task, where the outputs go, the rest
#: (folded away in the dock, "Advanced parameters" in Processing).
PARAM_GROUPS = ("essential", "output", "advanced")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: The bundled backbone (backend.models.diffusion.registry.DEFAULT_BACKBONE; spelled here to keep this module
#: free of torch).
DEFAULT_BACKBONE = "terrafuse-tiny"


@dataclass(frozen=True)
class Param:
    """One typed parameter of a job: ``label`` is its short name in forms, ``help`` the sentence of its
    tooltip, ``group`` where forms put it (:data:`PARAM_GROUPS`). Label and group default to
    :data:`PRESENTATION`'s entry for the name, else the name itself and essential (required) or advanced."""

    name: str
    kind: str
    help: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    positional: bool = False
    label: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"choice parameter {self.name!r} needs choices")
        label, group = PRESENTATION.get(self.name, ("", ""))
        if not self.label:  # a frozen dataclass: the defaults are filled in once, here
            object.__setattr__(self, "label", label or self.name.replace("_", " ").capitalize())
        if not self.group:  # a required parameter is never folded away; a required output is still an output
            folded = not group or (group == "advanced" and self.required)
            object.__setattr__(self, "group", ("essential" if self.required else "advanced") if folded else group)
        if self.group not in PARAM_GROUPS:
            raise ValueError(f"parameter {self.name!r}: unknown group {self.group!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any) -> Any:
        """Check and convert one value from JSON or the command line."""
        if value is None and not self.required:
            return None
        try:
            if self.kind == "int":
                return int(value)
            if self.kind == "float":
                return float(value)
            if self.kind == "bool":
                if isinstance(value, str):
                    return value.strip().lower() in ("1", "true", "yes", "on")
                return bool(value)
        except (TypeError, ValueError):
            raise UserError(f"Parameter '{self.name}' expects {self.kind}, got {value!r}") from None
        if self.kind == "choice" and value not in self.choices:
            raise UserError(f"Parameter '{self.name}' must be one of {', '.join(self.choices)}; got {value!r}")
        if not isinstance(value, str):
            raise UserError(f"Parameter '{self.name}' expects a {self.kind} (text), got {value!r}")
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "group": self.group,
            "help": self.help,
            "required": self.required,
            "default": None if self.required else self.default,
            "choices": list(self.choices),
        }


#: name -> (short label, group) of the parameters, shared by every job that has one of that name (a job may
#: still give a Param its own label or group).
PRESENTATION: dict[str, tuple[str, str]] = {
    "image": ("Raster", "essential"),
    "aoi": ("Area", "essential"),
    "labels": ("Labels", "essential"),
    "model": ("Model", "essential"),
    "backbone": ("Backbone", "essential"),
    "out": ("Output folder", "output"),
    "fusion": ("Fusion", "essential"),
    "head": ("Head", "advanced"),
    "bands": ("Bands (R,G,B)", "advanced"),
    "timesteps": ("Timesteps", "advanced"),
    "tile_px": ("Tile size (px)", "advanced"),
    "overlap_px": ("Tile overlap (px)", "advanced"),
    "epochs": ("Epochs", "advanced"),
    "patience": ("Patience (epochs)", "advanced"),
    "learning_rate": ("Learning rate", "advanced"),
    "batch_size": ("Batch size", "advanced"),
    "fusion_chs": ("Fused channels", "advanced"),
    "band_context": ("Bands beside features", "advanced"),
    "folds": ("Cross-validation folds", "advanced"),
    "hold_out_block_m": ("Hold-out block (m)", "advanced"),
    "inner_folds": ("Inner folds (epochs)", "advanced"),
    "inversion": ("Feature reading", "advanced"),
    "inversion_steps": ("Inversion steps", "advanced"),
    "unet_folder": ("UNet folder", "advanced"),
    "unverified": ("Accept unverified", "advanced"),
    "baseline": ("Random-forest baseline", "advanced"),
    "preview": ("Preview the area", "essential"),
    "preview_aoi": ("Preview area", "advanced"),
    "preview_out": ("Preview folder", "output"),
    "cache_dir": ("Feature cache folder", "advanced"),
    "cache_max_mb": ("Feature cache (MB)", "advanced"),
    "seed": ("Random seed", "advanced"),
    "precision": ("Precision", "advanced"),
    "compile": ("torch.compile", "advanced"),
    "confidence": ("Confidence raster", "output"),
    "uncertainty": ("Uncertainty raster", "output"),
    "polygons": ("Class polygons", "output"),
    "gsd_m": ("Working resolution (m)", "advanced"),
    "metadata": ("DiffusionSat metadata", "advanced"),
    "date": ("Acquisition date", "advanced"),
    "cluster": ("Ray cluster", "advanced"),
    "actors": ("Ray actors", "advanced"),
    "threads": ("Threads per actor", "advanced"),
    "in_flight": ("Batches in flight", "advanced"),
    "max_samples_px": ("Pixels sampled", "advanced"),
    "matrix_n": ("Matrix size", "advanced"),
    "batch": ("Batch", "advanced"),
    "action": ("Action", "essential"),
    "name": ("Model name", "essential"),
    "path": ("Folder or archive", "essential"),
    "folder": ("Download folder", "output"),
    "offline": ("Offline", "advanced"),
    "hr": ("High resolution", "essential"),
    "s2": ("Sentinel-2 series", "essential"),
    "s2_dates": ("Sentinel-2 dates", "essential"),
    "s2_bands": ("Sentinel-2 bands", "advanced"),
    "s1": ("Sentinel-1 series", "essential"),
    "s1_dates": ("Sentinel-1 dates", "essential"),
    "s1_bands": ("Sentinel-1 bands", "advanced"),
    "grid_gsd_m": ("Cell size (m)", "advanced"),
    "top_k": ("Classes per polygon", "advanced"),
    "learn": ("Learn prototypes", "essential"),
    "save_model": ("Save the model to", "output"),
    "similarities": ("Similarity raster", "output"),
    "overwrite": ("Overwrite", "output"),
    "fresh": ("Start afresh", "advanced"),
    "rescale_per_area": ("Rescale per area", "advanced"),
}

#: Writing beside files in the output folder that are not the job's outputs (only its own are replaced).
OVERWRITE_PARAM = Param("overwrite", "bool", "Write into an output folder that holds other files (they are kept; "
                        "only this job's own outputs are replaced)", False)
#: Resumable jobs keep their finished tiles in a resume store beside the cache until they complete.
FRESH_PARAM = Param("fresh", "bool", "Start from the first tile, ignoring the finished tiles a stopped run of the "
                    "same job left in its resume store", False)
#: The model's band statistics against the area's (backend/raster/band_check.py).
RESCALE_PARAM = Param("rescale_per_area", "bool", "Normalise the bands by the area's own percentiles instead of "
                      "the model's (for data of another scale or type than the model was trained on)", False)

#: Where the tiles run: this machine (empty), or a Ray cluster (backend/inference/cluster.py).
CLUSTER_PARAM = Param("cluster", "str", "Run the tiles on a Ray cluster: its address (host:port, ray://host:port, "
                      "auto), or 'local' for a Ray instance on this machine; empty: in this process", None)
#: How the tiles spread over the cluster (backend/inference/placement.py); unset: fitted to its nodes.
CLUSTER_PARAMS = (
    CLUSTER_PARAM,
    Param("actors", "int", "Cluster: Ray actors (model copies) to start (default: as many as the nodes hold)", None),
    Param("threads", "int", "Cluster: CPUs (torch threads) of each CPU actor (default: up to 4, fitted to the "
          "nodes)", None),
    Param("in_flight", "int", "Cluster: batches sent ahead to each actor (default: 2)", None),
)


@dataclass(frozen=True)
class JobSpec:
    """A job: its name, title, parameters and the dotted path of its run function."""

    name: str
    title: str
    help: str
    target: str  # "package.module:function", imported on first use
    params: tuple[Param, ...] = field(default_factory=tuple)
    group: str = "Terrafuse"

    def resolve(self) -> Callable[..., dict[str, Any]]:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def bind(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Validate raw parameters (JSON or command line) into the dict the run function gets."""
        known = {p.name for p in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"Job '{self.name}' has no parameter {', '.join(unknown)}")
        bound: dict[str, Any] = {}
        for param in self.params:
            if raw.get(param.name) is None:
                if param.required:
                    raise UserError(f"Job '{self.name}' needs the parameter '{param.name}'")
                bound[param.name] = param.default
            else:
                bound[param.name] = param.coerce(raw[param.name])
        return bound

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "help": self.help,
            "group": self.group,
            "params": [p.to_json() for p in self.params],
        }


JOBS: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    if spec.name in JOBS:
        raise ValueError(f"job {spec.name!r} is registered twice")
    JOBS[spec.name] = spec
    return spec


def get(name: str) -> JobSpec:
    try:
        return JOBS[name]
    except KeyError:
        raise UserError(f"Unknown job '{name}'; known jobs: {', '.join(sorted(JOBS))}") from None


def load_extra(module_names: list[str]) -> None:
    """Import modules that register further jobs (plugins of the backend, test jobs)."""
    for module_name in module_names:
        importlib.import_module(module_name)


# The built-in jobs. Later capabilities add their spec here, next to their parameters, and their run function in a
# module of this package.
register(
    JobSpec(
        name="info",
        title="Backend information",
        help="Python, torch and CUDA versions; the devices with their names and free memory.",
        target="backend.jobs.info:run_info",
        group="Diagnostics",
    )
)

register(
    JobSpec(
        name="selftest",
        title="Backend self-test",
        help=("The device the models will use, a matrix product and a tiny backbone forward on it with their "
              "speed, and the likely cause when a GPU is present but torch cannot use it."),
        target="backend.jobs.selftest:run_selftest",
        params=(
            Param("matrix_n", "int", "Size of the square matrices multiplied", 1024),
            Param("batch", "int", "Images in the backbone's batch", 4),
        ),
        group="Diagnostics",
    )
)

register(
    JobSpec(
        name="inspect",
        title="Inspect raster over an area",
        help=(
            "CRS, resolution in metres, size and, for each band, dtype, nodata and percentile "
            "statistics over the area (or the whole raster)."
        ),
        target="backend.jobs.inspect:run_inspect",
        params=(
            Param("image", "raster", "Raster file to inspect", positional=True),
            Param("aoi", "vector", "Area of interest (polygons, any CRS); the whole raster when omitted", None),
            Param("max_samples_px", "int", "Largest number of pixels read for the statistics", 4_000_000),
        ),
        group="Raster",
    )
)

#: How a few-shot head is validated; both trainers take them, so both hold out the same labels.
_VALIDATION_PARAMS = (
    Param("folds", "int", "Spatial cross-validation folds (0: from the labels per class, at most 5; 1: one split)",
          0),
    Param("hold_out_block_m", "float", "Side of the spatial blocks in metres: labels of a class within one block "
          "are held out together", 1000.0),
    Param("inner_folds", "int", "Inner spatial folds of each fold's training labels whose mean loss chooses how "
          "many epochs the head trains, none (the band branch alone) included; more cost more and, on the "
          "benchmark's scenes, changed nothing (docs/quality.md)", 1),
)

register(
    JobSpec(
        name="train",
        title="Train a head from labels",
        help=(
            "Trains a SatDiFuser fusion and a head on the labelled pixels of a labels layer (class_name, "
            "optionally class_id and colour). Backbone features of the labelled tiles are cached on disk, so a "
            "retrain after a new label computes only its tiles. The head is cross-validated on spatial folds of "
            "whole labels (blocks in metres; the epochs chosen on inner folds of the training labels, never on the "
            "labels it is scored on): per-class F1 and IoU with their spread over folds, the confusion matrix, and "
            "a per-pixel random forest on band values scored on the same folds. The saved head is then trained "
            "on every label (head.safetensors and config.json), and an optional preview maps the area with an "
            "uncertainty map."
        ),
        target="backend.jobs.train:run_train",
        params=(
            Param("image", "raster", "Raster under the labels"),
            Param("labels", "vector", "Labels layer (GeoPackage; field class_name, optionally class_id, colour)"),
            Param("backbone", "str", "Diffusion backbone: a name 'models list' prints, a diffusers folder, a zip "
                  "of one, or a hub id", DEFAULT_BACKBONE),
            Param("out", "output_folder", "Folder the head is saved into"),
            Param("fusion", "choice", "Fusion of the diffusion features (SatDiFuser eq. 1, 2 or 3-4)", "global",
                  choices=("global", "localized", "moe")),
            Param("head", "choice", "Head: auto (UPerNet once the labels cover about 262,000 pixels, else the "
                  "light per-pixel head), pixel or upernet", "auto", choices=("auto", "pixel", "upernet")),
            Param("bands", "str", "Bands fed as red, green, blue, e.g. 3,2,1 (default: the RGB bands, else 1,2,3)",
                  None),
            Param("timesteps", "str", "Diffusion timesteps of the features", "1,100,200"),
            Param("inversion", "choice", "How features are read: reuse (each timestep's features from the "
                  "inversion's own UNet calls, K calls) or paper (DDIM inversion to each timestep, then the UNet on "
                  "z_t at t, as SatDiFuser reads them; more calls, docs/performance.md)", "reuse",
                  choices=("reuse", "paper")),
            Param("inversion_steps", "int", "DDIM inversion steps of the paper's reading (default: one per "
                  "timestep)", None),
            Param("unet_folder", "str", "UNet folder inside the backbone (e.g. checkpoint-150000/unet or unet; "
                  "default: the newest checkpoint as DiffusionSat's authors load it)", None),
            Param("tile_px", "int", "Tile size in pixels (default: the backbone's training size)", None),
            Param("gsd_m", "float", "Ground resolution (m) the tiles and labels are resampled to, as segment "
                  "reads them; the head records it and segment maps at it; 0: the raster's own (default: the "
                  "backbone's pretraining resolution where it has one, else the raster's own)", None),
            Param("metadata", "choice", "DiffusionSat's metadata embedding: none (its zeros, as DiffusionSat "
                  "without metadata) or tile (each tile's centre longitude and latitude, ground resolution and "
                  "date; segment then feeds its tiles' own)", "none", choices=("none", "tile")),
            Param("date", "str", "Acquisition date (YYYY-MM-DD) for metadata 'tile' (default: the raster's date "
                  "tags, else its file name, else unknown)", None),
            Param("epochs", "int", "Most training epochs", 40),
            Param("patience", "int", "Epochs without a better loss on an inner fold of the training labels "
                  "before training stops (0: never)", 8),
            Param("learning_rate", "float", "AdamW learning rate (linear warm-up, then cosine decay)", 1e-3),
            Param("batch_size", "int", "Tiles per training step", 4),
            Param("fusion_chs", "int", "Channels of the fused feature pyramid", 64),
            Param("band_context", "bool", "Beside the backbone's features, the head also reads every band of the "
                  "raster at full resolution with its local means and spread (off: the paper's head on the "
                  "features alone; docs/quality.md)", True),
            *_VALIDATION_PARAMS,
            Param("baseline", "bool", "Also score a per-pixel random forest on band values on the same folds",
                  True),
            Param("preview", "bool", "After training, map the area with the new head, with an uncertainty raster",
                  True),
            Param("preview_aoi", "vector", "Area of the preview (polygons, any CRS); default: around the labels",
                  None),
            Param("preview_out", "output_folder", "Folder of the preview's outputs (default: <out>/preview)", None),
            Param("cache_dir", "str", "Folder the feature cache keeps its own subfolder in (terrafuse-features; "
                  "nothing else there is touched; default: the Terrafuse cache)", None),
            Param("cache_max_mb", "int", "Size bound of the feature cache in MB (least recently used tiles go "
                  "first)", 2048),
            Param("seed", "int", "Random seed (hold-out, initialisation, batches)", 0),
            OVERWRITE_PARAM,
        ),
        group="Models",
    )
)

register(
    JobSpec(
        name="segment",
        title="Map land cover with a trained head",
        help=(
            "Classifies the raster over the area (or all of it) with a head and its backbone, in overlapping "
            "tiles that are blended and written window by window (memory does not grow with the area); writes "
            "classes.tif (uint8, palette, nodata 255, class table), confidence.tif, optionally uncertainty.tif, "
            "classes.gpkg (class_id, class_name, area_m2, mean_confidence) and their QGIS styles."
        ),
        target="backend.jobs.segment:run_segment",
        params=(
            Param("image", "raster", "Raster to classify"),
            Param("model", "folder", "Head folder written by train (head.safetensors + config.json)", label="Head"),
            Param("out", "output_folder", "Folder the outputs are written into"),
            Param("aoi", "vector", "Area of interest (polygons, any CRS); the whole raster when omitted", None),
            Param("backbone", "str", "Backbone to use instead of the one recorded in the head (same sha256)", None,
                  group="advanced"),
            Param("unet_folder", "str", "UNet folder inside the backbone (e.g. checkpoint-150000/unet or unet; "
                  "default: the one the head records, else the newest checkpoint as DiffusionSat's authors load it)",
                  None, group="advanced"),
            Param("bands", "str", "Raster bands fed as red, green, blue, e.g. 3,2,1 or 1 (default: the head's)",
                  None),
            Param("overlap_px", "int", "Overlap of neighbouring tiles in pixels (default: a quarter tile; half a tile "
                  "when gsd_m is finer than the raster's)", None),
            Param("batch_size", "int", "Tiles per backbone call (default: 4 on the CPU, 16 on a GPU; halved when "
                  "the GPU runs out of memory)", None),
            Param("precision", "choice", "Precision of the backbone: auto is bfloat16 (or float16) autocast on a "
                  "GPU and float32 on the CPU", "auto", choices=("auto", "fp32", "bf16", "fp16")),
            Param("compile", "bool", "torch.compile the backbone's blocks (pays on a GPU for large areas; falls "
                  "back to eager mode when compiling fails)", False),
            Param("confidence", "bool", "Also write confidence.tif (blended probability of the class, 0-1)", True),
            Param("uncertainty", "bool", "Also write uncertainty.tif (normalised entropy, 0-1)", False),
            Param("polygons", "bool", "Also write classes.gpkg (class polygons)", True),
            Param("gsd_m", "float", "Ground resolution (m) the model works at: the raster is resampled to it and the "
                  "outputs back to the raster's grid; 0: the raster's own (default: the head's training "
                  "resolution if it records one, else the raster's own)", None),
            Param("date", "str", "Acquisition date (YYYY-MM-DD) for a head trained with metadata 'tile' (default: "
                  "the raster's date tags, else its file name, else unknown)", None),
            *CLUSTER_PARAMS,
            OVERWRITE_PARAM,
            FRESH_PARAM,
            RESCALE_PARAM,
        ),
        group="Models",
    )
)

register(
    JobSpec(
        name="models",
        title="Model manager",
        help=(
            "list: the known models with source, size, licence and where installed (JSON, no network); info: "
            "the size and licence a download would fetch; download: fetch with progress and resume, check the "
            "published checksum; verify: re-hash what is installed; import: a local folder or archive "
            "(offline use; SkySense's files are converted)."
        ),
        target="backend.jobs.model_manager:run_models",
        params=(
            Param("action", "choice", "What to do", choices=("list", "info", "download", "verify", "import"),
                  positional=True),
            Param("name", "str", "Model name, as 'models list' prints it", None),
            Param("path", "file", "import: the folder or zip archive to import", None),
            Param("folder", "output_folder", "download: folder the files go to (default: the models folder)", None),
            Param("offline", "bool", "Never use the network", False),
            Param("unverified", "bool", "download: accept a model whose catalogue entry pins no checksum (the "
                  "install is recorded as unverified)", False),
        ),
        group="Models",
    )
)

_SKYSENSE_INPUTS = (
    Param("model", "str", "SkySense folder (config.json + model.safetensors), a bundled model's name, or a "
          "configuration name built with random weights (skysense-tiny, skysense-paper)",
          "terrafuse-tiny-skysense"),
    Param("out", "output_folder", "Folder the outputs are written into"),
    Param("hr", "raster", "High-resolution optical image (R, G, B)", None),
    Param("s2", "str", "Sentinel-2 series: comma-separated raster paths, one per date", None),
    Param("s2_dates", "str", "Sentinel-2 dates, YYYY-MM-DD, one per raster (default: metadata, then file names)",
          None),
    Param("s2_bands", "str", "Sentinel-2 bands B2-B8, B8A, B11, B12 as 1-based indices, 0 for a band the raster "
          "lacks when the model has a band mask (default: descriptions; Landsat 8/9 OLI B2-B7 stand for B2, B3, B4, "
          "B8A, B11, B12)", None),
    Param("s1", "str", "Sentinel-1 series: comma-separated raster paths, one per date", None),
    Param("s1_dates", "str", "Sentinel-1 dates, YYYY-MM-DD, one per raster (default: metadata, then file names)",
          None),
    Param("s1_bands", "str", "Sentinel-1 bands VV, VH as 1-based indices (default: descriptions)", None),
    Param("aoi", "vector", "Area of interest (polygons, any CRS); the inputs' common extent when omitted", None),
    Param("grid_gsd_m", "float", "Cell size of the common output grid in metres (default: 10 m; with a "
          "high-resolution image alone, 2 of its pixels)", None),
    Param("tile_px", "int", "Tile size in grid cells (default: the model's)", None),
    Param("batch_size", "int", "Tiles per model call", 4),
    Param("seed", "int", "Random seed (weights of a configuration built fresh, prototype learning)", 0),
)

register(
    JobSpec(
        name="classify",
        title="Multi-modal classification (SkySense)",
        help=(
            "Classifies the area from any of a high-resolution image, a Sentinel-2 and a Sentinel-1 series on one "
            "grid with a SkySense model and its head; writes classes.tif (uint8, palette, nodata 255), "
            "confidence.tif and, for polygons such as fields, classes.gpkg with each polygon's class and top-k "
            "probabilities."
        ),
        target="backend.jobs.classify:run_classify",
        params=_SKYSENSE_INPUTS + (
            Param("polygons", "vector", "Polygons (e.g. fields) that each get one class and top-k probabilities",
                  None, label="Fields (polygons)", group="essential"),
            Param("top_k", "int", "Classes listed per polygon", 3),
            Param("confidence", "bool", "Also write confidence.tif (probability of the class)", True),
            *CLUSTER_PARAMS,
            OVERWRITE_PARAM,
            FRESH_PARAM,
            RESCALE_PARAM,
        ),
        group="SkySense",
    )
)

register(
    JobSpec(
        name="series",
        title="Dates and checks of SkySense inputs",
        help=(
            "For each raster of a high-resolution image, a Sentinel-2 and a Sentinel-1 series: its date (metadata, "
            "then file name), its bands, and what would stop a SkySense job (no CRS, missing bands, no date, "
            "rasters that do not overlap). What the dock's date table shows."
        ),
        target="backend.jobs.series:run_series",
        params=tuple(p for p in _SKYSENSE_INPUTS if p.name in ("model", "hr", "s2", "s2_bands", "s1", "s1_bands",
                                                              "grid_gsd_m")),
        group="SkySense",
    )
)

register(
    JobSpec(
        name="train-skysense",
        title="Train a SkySense head from labels",
        help=(
            "Trains SkySense's per-pixel classifier head on the labelled cells of a labels layer (class_name, "
            "optionally class_id and colour) from any of a high-resolution image, a Sentinel-2 and a Sentinel-1 "
            "series: the fused features of the labelled tiles are cached on disk (a retrain after a new label "
            "computes only its tiles), the head is cross-validated on the same spatial folds of whole labels as "
            "the SatDiFuser head (the epochs chosen on inner folds of the training labels), a random forest on "
            "every band of every date is scored on the same folds as a baseline; the head saved with the model "
            "(a SkySense folder for the classify task) is then trained on every label."
        ),
        target="backend.jobs.train_skysense:run_train_skysense",
        params=tuple(p for p in _SKYSENSE_INPUTS if p.name != "out") + (
            Param("labels", "vector", "Labels layer (GeoPackage; field class_name, optionally class_id, colour)"),
            Param("out", "output_folder", "Folder the SkySense model with its trained head is saved into"),
            Param("epochs", "int", "Most training epochs (a linear head on cached features: each takes "
                  "milliseconds)", 100),
            Param("patience", "int", "Epochs without a better loss on an inner fold of the training labels "
                  "before training stops (0: never)", 15),
            Param("learning_rate", "float", "AdamW learning rate (linear warm-up, then cosine decay)", 3e-2),
            Param("band_context", "bool", "Beside F_fus, the head also reads the cells' band values (each series "
                  "averaged over its dates) with their local means and spread (off: the linear head on F_fus "
                  "alone; docs/quality.md)", True),
            *_VALIDATION_PARAMS,
            Param("baseline", "bool", "Also score a per-pixel random forest on every band of every date, on the "
                  "same folds", True),
            Param("cache_dir", "str", "Folder the feature cache keeps its own subfolder in (terrafuse-features; "
                  "nothing else there is touched; default: the Terrafuse cache)", None),
            Param("cache_max_mb", "int", "Size bound of the feature cache in MB (least recently used tiles go "
                  "first)", 2048),
            OVERWRITE_PARAM,
        ),
        group="SkySense",
    )
)

register(
    JobSpec(
        name="prototypes",
        title="Geo-prototype map (SkySense)",
        help=(
            "Assigns every cell's fused feature to the most similar geo-context prototype of its region (SkySense "
            "Fig. 5); writes prototypes.tif (paletted index), prototype_similarity.tif (cosine similarity) and "
            "prototypes.json (palette, nearest class per prototype). Optionally learns the prototypes on the "
            "area first (Sinkhorn-Knopp assignment, EMA update) and saves the model."
        ),
        target="backend.jobs.prototypes:run_prototypes",
        params=_SKYSENSE_INPUTS + (
            Param("learn", "choice", "Learn the prototypes on the area before mapping", "none",
                  choices=("none", "prototypes")),
            Param("epochs", "int", "Passes of prototype learning: each is one Sinkhorn assignment and one EMA step "
                  "(momentum 0.5) per region over all the area's pixels; the order of the tiles does not matter", 5),
            Param("save_model", "output_folder", "Folder the model (with learned prototypes) is saved into", None),
            Param("similarities", "bool", "Also write prototype_similarities.tif (the similarity to every prototype "
                  "of the region, what a click on the map lists)", True),
            *CLUSTER_PARAMS,
            OVERWRITE_PARAM,
            FRESH_PARAM,
            RESCALE_PARAM,
        ),
        group="SkySense",
    )
)
