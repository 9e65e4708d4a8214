"""Terrafuse's own cache and model folders, overridable through the environment."""

from __future__ import annotations

import os
from pathlib import Path

#: Folder for derived files (hash records, extracted archives, prompt embeddings).
CACHE_DIR_ENV = "TERRAFUSE_CACHE_DIR"
#: Folder where downloaded model archives (for example DiffusionSat's zip files) are looked up.
MODELS_DIR_ENV = "TERRAFUSE_MODELS_DIR"


def cache_dir() -> Path:
    """``$TERRAFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/terrafuse``, else ``~/.cache/terrafuse``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "terrafuse"


def models_dir() -> Path:
    """``$TERRAFUSE_MODELS_DIR``, else ``<cache_dir>/models``."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser()
    return cache_dir() / "models"
