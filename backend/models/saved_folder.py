"""Saving a model folder (config.json + safetensors) writes only the model's own files, and only into a
folder that Terrafuse wrote or that holds no other model.

Terrafuse's model folders carry a marker in their ``config.json``: ``"format"`` is ``terrafuse-head`` (a
SatDiFuser head) or ``terrafuse-skysense`` (a SkySense model). A folder whose ``config.json`` lacks it (a
diffusers ``unet/``) is never written into: the save is refused with a :class:`UserError`. Each file is
written under a temporary name that cannot be planted (:mod:`backend.atomic_files`) and renamed into place;
other files in the folder (a README the user keeps beside a head) are left as they are. Whether the folder
may hold other files at all is the job's output-folder check (:mod:`backend.raster.output_folder`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic_files import write_bytes
from ..errors import UserError

CONFIG_NAME = "config.json"
#: The value of ``"format"`` in the config.json of every folder Terrafuse saves.
TERRAFUSE_FORMATS = ("terrafuse-head", "terrafuse-skysense")


def written_by_terrafuse(folder: Path) -> bool:
    """Whether ``folder``'s config.json carries Terrafuse's marker."""
    try:
        data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") in TERRAFUSE_FORMATS


def check_replaceable(folder: Path, what: str) -> None:
    """Refuse to replace ``folder`` unless it is missing, empty, or a model folder Terrafuse wrote."""
    if folder.is_symlink():
        raise UserError(f"{folder} is a symbolic link; choose a new or empty folder to save the {what} in")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} is a file; choose a new or empty folder to save the {what} in")
    if (folder / CONFIG_NAME).exists() and not written_by_terrafuse(folder):
        raise UserError(f"{folder} holds a model Terrafuse did not write (its {CONFIG_NAME} has no Terrafuse "
                        f"format marker); choose a new or empty folder to save the {what} in")


def save_model_files(folder: str | os.PathLike[str], what: str, files: dict[str, bytes]) -> Path:
    """Check that ``folder`` may take the model, then write each of ``files`` (name -> bytes) whole."""
    folder = Path(folder)
    check_replaceable(folder, what)
    for name, data in files.items():
        write_bytes(folder / name, data)
    return folder
