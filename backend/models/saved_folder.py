"""Saving a model folder (config.json + safetensors) replaces only a folder that Terrafuse wrote.

Terrafuse's model folders carry a marker in their ``config.json``: ``"format"`` is ``terrafuse-head`` (a
SatDiFuser head) or ``terrafuse-skysense`` (a SkySense model). A folder without it (a diffusers ``unet/``, a
user's photos) is never replaced: the save is refused with a :class:`UserError`. The new folder is written
whole under a temporary name that cannot be planted (:mod:`backend.atomic_files`) and then renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..atomic_files import write_folder
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
    if any(folder.iterdir()) and not written_by_terrafuse(folder):
        raise UserError(f"{folder} holds files Terrafuse did not write (its {CONFIG_NAME} has no Terrafuse "
                        f"format marker); choose a new or empty folder to save the {what} in")


def save_model_folder(folder: str | os.PathLike[str], what: str, fill: Callable[[Path], None]) -> Path:
    """Check that ``folder`` may be replaced, then write it whole through ``fill(temporary_folder)``."""
    folder = Path(folder)
    check_replaceable(folder, what)
    return write_folder(folder, fill)
