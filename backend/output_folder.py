"""The folders a job writes into, checked before any work and locked while the job writes.

Every job's ``output_folder`` parameters go through :func:`claimed_outputs` (from
:func:`backend.worker.run_job`, so the command line, the worker and the Processing algorithms all get
it): the folder must not be a file, must hold no input of the job, must be writable and have room for
the estimated output; a folder holding files that are not this job's outputs (:data:`JOB_OUTPUTS`) is
refused unless the user asks to ``overwrite``, and even then only the job's own outputs are replaced;
a lock file in the folder refuses a second job writing into it at the same time (an OS lock, so a
killed job never leaves a stale lock behind). Standard library only: the worker imports it before any
model.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import UserError

LOCK_NAME = ".terrafuse.lock"
#: Files any Terrafuse job may leave or use in its folder (the lock, temporary outputs of a running job,
#: the journal of the older resume scheme).
_CONTROL = (LOCK_NAME, ".*.partial-*", ".terrafuse-journal.json*", ".*.old-*")
#: GDAL and SQLite companions of an output.
_COMPANIONS = ("{}.aux.xml", "{}-wal", "{}-shm", "{}-journal")

_SEGMENT = ("classes.tif", "classes.qml", "classes.gpkg", "classes_polygons.qml", "confidence.tif", "confidence.qml",
            "uncertainty.tif", "uncertainty.qml")
_SKYSENSE_MODEL = ("config.json", "model.safetensors")

#: (job, output_folder parameter) -> the names the job writes there (glob patterns, top-level entries). The
#: folders of parameters not listed (the model manager's) are the job's own business.
JOB_OUTPUTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("segment", "out"): _SEGMENT,
    ("train", "out"): ("head.safetensors", "config.json", "preview"),
    ("train", "preview_out"): _SEGMENT,
    ("classify", "out"): ("classes.tif", "classes.qml", "confidence.tif", "confidence.qml", "classes.gpkg",
                          "classes_polygons.qml"),
    ("prototypes", "out"): ("prototypes.tif", "prototypes.qml", "prototype_similarity.tif",
                            "prototype_similarities.tif", "prototypes.json", "regions.gpkg", "regions.qml",
                            ".learned-*"),
    ("prototypes", "save_model"): _SKYSENSE_MODEL,
    ("train-skysense", "out"): _SKYSENSE_MODEL,
}

#: Parameter kinds that name an input path.
_INPUT_KINDS = ("raster", "vector", "file", "folder")
#: Text parameters that hold comma-separated input rasters, and those that may name a model folder.
_INPUT_LISTS = ("s2", "s1")
_MAYBE_PATHS = ("model", "backbone")
#: Bytes of the outputs per pixel of the input: class ids (1), confidence and uncertainty (4 each),
#: polygons and styles (about 2); the upper bound, as if nothing compressed.
_SEGMENT_BYTES_PER_PX = 11
#: A head or a SkySense model folder, with room to spare.
_MODEL_BYTES = 64 * 2**20


def is_own(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether the top-level entry ``name`` is one of the job's outputs, their companions, or a control file."""
    for pattern in patterns:
        for companion in ("{}", *_COMPANIONS):
            if fnmatch.fnmatchcase(name, companion.format(pattern)):
                return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _CONTROL)


def local_path(value: str) -> Path | None:
    """``value`` as a local file system path, or None for what GDAL opens that is not one (URLs, /vsi
    paths, driver prefixes such as ``GPKG:``)."""
    text = str(value).strip()
    if not text or "://" in text or text.startswith("/vsi") or (":" in text[2:] and not Path(text).exists()):
        return None
    return Path(text).expanduser()


def input_paths(params_kinds: dict[str, str], params: dict[str, Any]) -> list[Path]:
    """The local paths of a job's inputs (files and folders; models given by name are not paths)."""
    paths = []
    for name, kind in params_kinds.items():
        value = params.get(name)
        if not value or not isinstance(value, str):
            continue
        if kind in _INPUT_KINDS:
            candidates = [value]
        elif name in _INPUT_LISTS:
            candidates = [v for v in value.split(",") if v.strip()]
        elif name in _MAYBE_PATHS and (os.sep in value or Path(value).exists()):
            candidates = [value]
        else:
            continue
        paths.extend(p for p in map(local_path, candidates) if p is not None)
    return paths


def check_input(path: Path) -> None:
    """An input that is missing, unreadable or an empty file is refused with one line, before any work."""
    if not path.exists():
        raise UserError(f"Input not found: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"Input {path} cannot be read (permission denied); change its permissions or copy it")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"Input {path} is an empty file (0 bytes): it holds no data; choose the file it was "
                        "meant to be a copy of")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_output_folder(folder: Path, patterns: tuple[str, ...], inputs: list[Path], overwrite: bool,
                        label: str) -> None:
    """Refuse a folder the job must not write into, with one line; nothing is created."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"The output folder {folder} ({label}) is a file; choose a folder (new or empty)")
    for path in inputs:
        if _inside(path, folder):
            raise UserError(f"The output folder {folder} ({label}) holds an input of this job ({path}); its "
                            "outputs could overwrite it: choose another output folder")
    if not folder.is_dir():
        return
    try:
        others = sorted(e.name for e in folder.iterdir() if not is_own(e.name, patterns))
    except PermissionError:
        raise UserError(f"The output folder {folder} ({label}) cannot be read (permission denied)") from None
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(f"The output folder {folder} ({label}) holds files that are not this job's outputs "
                        f"({shown}); choose a new or empty folder, or the option overwrite (--overwrite) to write "
                        "beside them: only the job's own outputs are replaced")


def check_room(folder: Path, need_bytes: int, label: str) -> None:
    """Refuse when the disk of ``folder`` has less free space than the estimated output."""
    if need_bytes <= 0:
        return
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(f"Not enough free space for the outputs in {folder} ({label}): about "
                        f"{_size(need_bytes)} needed, {_size(free)} free; free some space or choose another folder")


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@dataclass
class FolderLock:
    """An exclusive OS lock on ``<folder>/.terrafuse.lock``, released (and the file removed) by
    :meth:`release`; the OS releases it when the process dies, so a killed job leaves no stale lock."""

    path: Path
    handle: IO[str]

    @classmethod
    def acquire(cls, folder: Path, job: str) -> FolderLock:
        path = folder / LOCK_NAME
        while True:
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the job's duration
            try:
                _lock(handle)
            except OSError:
                holder = _read_holder(handle)
                handle.close()
                raise UserError(f"Another Terrafuse job{holder} is writing into {folder}; wait until it is done "
                                "or choose another output folder") from None
            # The file may have been removed by the job that held it just before we locked it: lock again.
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"job": job, "pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self.handle.closed:
            return
        with suppress(OSError):
            self.path.unlink()
        self.handle.close()


def _lock(handle: IO[str]) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_holder(handle: IO[str]) -> str:
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
        return f" ({data['job']}, process {data['pid']} on {data['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextmanager
def claimed_folder(folder: Path, job: str, patterns: tuple[str, ...], inputs: list[Path], overwrite: bool,
                   need_bytes: int, label: str) -> Iterator[Path]:
    """Check ``folder``, create it if needed, lock it for the block; afterwards remove the lock, and the
    folder if it was created here and is still empty (a failed or cancelled job)."""
    check_output_folder(folder, patterns, inputs, overwrite, label)
    created = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        created = missing
        lock = FolderLock.acquire(folder, job)
    except OSError as exc:
        _remove_empty(created)
        raise UserError(f"Cannot write into the output folder {folder} ({label}): {_os_reason(exc)}") from None
    try:
        _remove_stale(folder)
        check_room(folder, need_bytes, label)
        # What was checked may have changed while we waited for the lock (another job just finished).
        check_output_folder(folder, patterns, inputs, overwrite, label)
        yield folder
    finally:
        lock.release()
        _remove_empty(created)


def _remove_stale(folder: Path) -> None:
    """Temporary files of a killed job (SIGKILL, a power cut): with the lock held, no job is writing them."""
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME and any(fnmatch.fnmatchcase(entry.name, p) for p in _CONTROL):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return


def _os_reason(exc: OSError) -> str:
    reasons = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device",
               errno.ENOTDIR: "a part of its path is a file", errno.EEXIST: "a file of that name exists"}
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


def estimate_bytes(job: str, param: str, params: dict[str, Any]) -> int:
    """A generous estimate of what ``job`` writes into its ``param`` folder (0 when unknown)."""
    if (job, param) in (("segment", "out"), ("train", "preview_out")):
        if job == "train" and not params.get("preview"):
            return 0
        return _raster_pixels(params.get("image")) * _SEGMENT_BYTES_PER_PX
    if param in ("save_model",) or job in ("train", "train-skysense"):
        return _MODEL_BYTES
    if job in ("classify", "prototypes"):
        cells = _grid_cells(params)
        return cells * (9 if job == "classify" else 2 * 64 + 9)
    return 0


def _raster_pixels(path: Any) -> int:
    if not path:
        return 0
    try:
        import rasterio

        with rasterio.open(str(path)) as src:
            return int(src.width) * int(src.height)
    except Exception:  # noqa: BLE001 - the job reports an unreadable raster in its own words
        return 0


def _grid_cells(params: dict[str, Any]) -> int:
    """Cells of the common grid at ``grid_gsd_m`` over the largest input raster (an upper bound)."""
    series = [p for key in _INPUT_LISTS for p in str(params.get(key) or "").split(",") if p.strip()]
    if not params.get("grid_gsd_m") and params.get("hr") and not series:
        from .raster.stack import HR_ALONE_PIXELS_PER_CELL  # a high-resolution image alone: cells of its pixels

        return _raster_pixels(params["hr"]) // HR_ALONE_PIXELS_PER_CELL**2
    gsd = float(params.get("grid_gsd_m") or 10.0)
    paths = [params.get("hr")] + series
    return max([_cells_of(str(p).strip(), gsd) for p in paths if p and str(p).strip()] or [0])


def _cells_of(path: str, gsd: float) -> int:
    try:
        import rasterio

        from .raster.area import pixel_size_m

        with rasterio.open(path) as src:
            size = pixel_size_m(src.crs, src.transform, (src.bounds.bottom + src.bounds.top) / 2) if src.crs else None
            return int(src.width * size[0] * src.height * size[1] / gsd**2) if size else 0
    except Exception:  # noqa: BLE001 - the job reports an unreadable raster in its own words
        return 0


@contextmanager
def claimed_outputs(job: str, params_kinds: dict[str, str], params: dict[str, Any]) -> Iterator[None]:
    """The checks of every input and output folder of a job before it runs, and the folders' locks while it
    runs (see the module's docstring)."""
    inputs = input_paths(params_kinds, params)
    for path in inputs:
        check_input(path)
    overwrite = bool(params.get("overwrite"))
    with ExitStack() as stack:
        for name, kind in params_kinds.items():
            patterns = JOB_OUTPUTS.get((job, name))
            if kind != "output_folder" or not params.get(name) or patterns is None:
                continue
            folder = Path(str(params[name])).expanduser()
            label = "--" + name.replace("_", "-")
            stack.enter_context(claimed_folder(folder, job, patterns, inputs, overwrite,
                                               estimate_bytes(job, name, params), label))
        yield
