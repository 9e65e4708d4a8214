"""A timm-like registry: ``create_skysense(name, **overrides)`` resolves a name to a configuration and
builds the model (random weights; load trained ones with ``SkySense.from_pretrained`` or the converter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundled import BUNDLED_SKYSENSE_FOLDER, BUNDLED_SKYSENSE_NAME, bundled_skysense_available
from .config import CONFIGS, SkySenseConfig
from .model import SkySense

#: Pretrained SkySense folders that ship with Terrafuse, by name (see bundled.py and their model cards).
BUNDLED_SKYSENSE = {BUNDLED_SKYSENSE_NAME: BUNDLED_SKYSENSE_FOLDER}


def list_skysense() -> list[str]:
    return sorted(CONFIGS)


def bundled_skysense_folder(name: str) -> Path | None:
    """The folder of the pretrained SkySense shipped as ``name`` (load it with ``SkySense.from_pretrained``),
    or None when ``name`` is not a bundled model or its files are missing from this copy."""
    folder = BUNDLED_SKYSENSE.get(name)
    return folder if folder is not None and bundled_skysense_available(folder) else None


def skysense_config(name: str, **overrides: Any) -> SkySenseConfig:
    """The configuration registered as ``name`` with fields replaced by ``overrides`` (``modalities=`` keeps
    a subset of the encoders)."""
    try:
        factory = CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown SkySense configuration {name!r}; known: {', '.join(list_skysense())}") from None
    return factory().with_overrides(**overrides)


def create_skysense(name: str, **overrides: Any) -> SkySense:
    return SkySense(skysense_config(name, **overrides))
