"""The job registry: every capability is defined once, as a name, a typed parameter set and a
``run(params, progress) -> result`` function.

The command line (:mod:`backend.__main__`), the worker (:mod:`backend.worker`) and the plugin's
Processing algorithms are all generated from these specs. This module uses the standard library
only: the plugin imports it to build its algorithms without pulling in numpy or torch, and each
job's function is imported lazily, the first time the job runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError

#: Parameter kinds. Paths travel as strings; pixels never travel through the pipe.
PARAM_KINDS = (
    "raster",  # path of a raster file GDAL reads
    "vector",  # path of a vector file GDAL reads (areas, labels)
    "file",  # any input file
    "output_folder",  # a folder the job writes into
    "output_file",  # a file the job writes
    "str",
    "int",
    "float",
    "bool",
    "choice",
)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One typed parameter of a job."""

    name: str
    kind: str
    help: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    positional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"choice parameter {self.name!r} needs choices")

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
            "help": self.help,
            "required": self.required,
            "default": None if self.required else self.default,
            "choices": list(self.choices),
        }


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


# The built-in jobs. Later capabilities add their spec here, next to their parameters.
register(
    JobSpec(
        name="info",
        title="Backend information",
        help="Python, torch and CUDA versions; the devices with their names and free memory.",
        target="backend.info:run_info",
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
        target="backend.raster.inspect:run_inspect",
        params=(
            Param("image", "raster", "Raster file to inspect", positional=True),
            Param("aoi", "vector", "Area of interest (polygons, any CRS); the whole raster when omitted", None),
            Param("max_samples_px", "int", "Largest number of pixels read for the statistics", 4_000_000),
        ),
        group="Raster",
    )
)
