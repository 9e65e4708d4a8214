"""The model files a cluster job needs, carried to the nodes by Ray and checked by sha256 on arrival, so
that no node needs a shared folder or the plugin installed.

Two ways in, by size and kind:

- The backend's code and the bundled models (``resources/models``, a few MB) travel as the job's Ray
  runtime environment (``working_dir``, :func:`stage_code`): each node unpacks them once per content
  and the workers import the backend from there, never from the driver's folders. The driver sends
  the sha256 of every bundled file; :func:`verify_bundled` checks the node's copy before a model loads.
- The user's files (a head folder, a backbone folder or archive, a SkySense folder on the driver's
  disk) travel through the object store (:func:`pack`, in pieces of :data:`PIECE_BYTES`) and are
  written on the node under ``<cache>/cluster-files/<digest>/<name>`` (:func:`unpack`), every file
  checked against its sha256 before the folder is moved into place; a node that already holds the
  same content takes it as it is. The folder keeps its driver-side name, which is a backbone's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..hub.checksums import HASH_RECORD_NAME, file_sha256

if TYPE_CHECKING:  # torch comes with it: a Ray Client server unpickles a delivery and must not import torch
    from .spec import TileModelSpec

#: Bytes per object-store piece of a shipped file (a backbone of gigabytes goes as many pieces).
PIECE_BYTES = 64 * 2**20
#: Folder of the node's cache that holds the files received from drivers.
RECEIVED_FOLDER = "cluster-files"
#: Spec parameters that may name a folder or file on the driver's disk.
PATH_PARAMS = ("model", "backbone")
_SKIPPED = ("__pycache__", "*.pyc", HASH_RECORD_NAME)


def _backend_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def bundled_models_dir() -> Path:
    """``resources/models`` beside this process's ``backend`` package (on a node: the shipped copy)."""
    return _backend_dir().parent / "resources" / "models"


# -- the code and the bundled models: the runtime environment -----------------------------------------


def stage_code() -> Path:
    """A temporary folder with ``backend/`` and ``resources/models/`` only, for Ray's ``working_dir``
    (the caller removes it once Ray has uploaded it)."""
    stage = Path(tempfile.mkdtemp(prefix="tf-code-"))
    ignore = shutil.ignore_patterns(*_SKIPPED)
    shutil.copytree(_backend_dir(), stage / "backend", ignore=ignore)
    if bundled_models_dir().is_dir():
        shutil.copytree(bundled_models_dir(), stage / "resources" / "models", ignore=ignore)
    return stage


def bundled_manifest(root: Path | None = None) -> dict[str, str]:
    """sha256 of every bundled model file, by path relative to ``resources/models``."""
    root = bundled_models_dir() if root is None else root
    return {path.relative_to(root).as_posix(): file_sha256(path) for path in _files(root)}


def verify_bundled(expected: dict[str, str]) -> None:
    """The node's bundled files are the driver's (sha256 each), else a :class:`UserError` naming one."""
    root = bundled_models_dir()
    for relative, sha256 in sorted(expected.items()):
        path = root / relative
        if not path.is_file():
            raise UserError(f"The bundled model file {relative} did not arrive on the cluster node "
                            f"{socket.gethostname()} (looked in {root})")
        if file_sha256(path) != sha256:
            raise UserError(f"The bundled model file {relative} differs on the cluster node "
                            f"{socket.gethostname()} from the driver's (sha256 mismatch)")


# -- the user's files: the object store --------------------------------------------------------------


@dataclass(frozen=True)
class ShippedFile:
    """One file: its path in the folder, size, sha256 and the object refs of its pieces."""

    relative: str
    size: int
    sha256: str
    pieces: tuple[Any, ...]


@dataclass(frozen=True)
class ModelParcel:
    """A folder (or one file) of the driver's in the object store. ``digest`` hashes the names, sizes
    and sha256 of its files: the node keeps it under that name, so equal contents are received once."""

    name: str
    is_folder: bool
    files: tuple[ShippedFile, ...]
    digest: str
    origin: str = ""  # the driver's path, for messages

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def pack(path: Path) -> ModelParcel:
    """Put ``path`` (a folder or a file) into the object store, hashed file by file."""
    import ray

    path = Path(path).resolve()
    members = [(p.relative_to(path).as_posix(), p) for p in _files(path)] if path.is_dir() else [(path.name, path)]
    shipped = []
    for relative, file in members:
        digest = hashlib.sha256()
        pieces = []
        with open(file, "rb") as stream:
            while piece := stream.read(PIECE_BYTES):
                digest.update(piece)
                pieces.append(ray.put(piece))
        shipped.append(ShippedFile(relative, file.stat().st_size, digest.hexdigest(), tuple(pieces)))
    facts = json.dumps([path.name, path.is_dir(), [(f.relative, f.size, f.sha256) for f in shipped]])
    return ModelParcel(path.name, path.is_dir(), tuple(shipped), hashlib.sha256(facts.encode()).hexdigest(),
                       str(path))


def unpack(parcel: ModelParcel, root: Path) -> Path:
    """The parcel's folder (or file) on this node, under ``root/<digest>/``; written to a temporary
    folder, every file checked against its sha256, then moved into place in one rename (two actors
    on one node may receive it at once)."""
    import ray

    home = root / parcel.digest
    target = home / parcel.name
    if home.is_dir() and _matches(parcel, target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{parcel.digest[:12]}-", dir=root))
    try:
        for shipped in parcel.files:
            path = scratch / parcel.name / shipped.relative if parcel.is_folder else scratch / parcel.name
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(path, "wb") as stream:
                for ref in shipped.pieces:
                    piece = ray.get(ref)
                    digest.update(piece)
                    stream.write(piece)
            if digest.hexdigest() != shipped.sha256:
                raise UserError(f"The model file {parcel.name}/{shipped.relative} arrived damaged on the cluster "
                                f"node {socket.gethostname()} (sha256 mismatch)")
        try:
            os.rename(scratch, home)
        except OSError:  # another actor of this node moved the same content in first
            if not _matches(parcel, target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _matches(parcel: ModelParcel, target: Path) -> bool:
    """Whether ``target`` holds the parcel's files (by size, then sha256)."""
    for shipped in parcel.files:
        path = target / shipped.relative if parcel.is_folder else target
        if not path.is_file() or path.stat().st_size != shipped.size or file_sha256(path) != shipped.sha256:
            return False
    return True


def _files(root: Path) -> Iterator[Path]:
    skipped = {"__pycache__", HASH_RECORD_NAME}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not skipped.intersection(path.relative_to(root).parts) and path.suffix != ".pyc":
            yield path


# -- what a job sends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDelivery:
    """What a cluster actor receives beside the spec: the sha256 of the bundled files and the parcels
    of the user's files (by spec parameter). :meth:`receive` returns the spec with node-local paths."""

    bundled: dict[str, str] = field(default_factory=dict)
    parcels: dict[str, ModelParcel] = field(default_factory=dict)

    def receive(self, spec: TileModelSpec) -> tuple[TileModelSpec, dict[str, str]]:
        """Check the bundled files, unpack the parcels; the spec to load and where each parcel went."""
        from ..hub.paths import cache_dir

        verify_bundled(self.bundled)
        root = cache_dir() / RECEIVED_FOLDER
        placed = {key: str(unpack(parcel, root)) for key, parcel in self.parcels.items()}
        return replace(spec, params={**spec.params, **placed}), placed

    def in_driver_terms(self, error: BaseException, placed: dict[str, str]) -> BaseException:
        """A :class:`UserError` that names a received file by the driver's path (what the user knows)."""
        if not isinstance(error, UserError):
            return error
        message = str(error)
        for key, path in placed.items():
            message = message.replace(path, self.parcels[key].origin)
        return UserError(message) if message != str(error) else error


def driver_files(spec: TileModelSpec) -> dict[str, Path]:
    """The spec's folders and files on the driver's disk that a node needs (bundled models excluded:
    they travel with the code). A segment head that names no backbone brings the one its config records."""
    found: dict[str, Path] = {}
    params = dict(spec.params)
    if spec.job == "segment" and not params.get("backbone") and params.get("model"):
        from ..models.segmenter import read_config

        backbone = read_config(params["model"]).backbone
        params["backbone"] = backbone.get("source") or backbone.get("name")
    bundled = bundled_models_dir().resolve()
    for key in PATH_PARAMS:
        value = params.get(key)
        if not value:
            continue
        path = Path(str(value)).expanduser()
        if path.exists() and bundled not in path.resolve().parents:
            found[key] = path.resolve()
    return found


def deliver(spec: TileModelSpec) -> ModelDelivery:
    """The delivery of ``spec``'s files to the nodes (the object refs live as long as it does)."""
    return ModelDelivery(bundled_manifest(), {key: pack(path) for key, path in driver_files(spec).items()})
