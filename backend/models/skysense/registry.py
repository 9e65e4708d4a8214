"""A timm-like registry: ``create_skysense(name, **overrides)`` resolves a name to a configuration and
builds the model (random weights; load trained ones with ``SkySense.from_pretrained`` or the converter)."""

from __future__ import annotations

from typing import Any

from .config import CONFIGS, SkySenseConfig
from .model import SkySense


def list_skysense() -> list[str]:
    return sorted(CONFIGS)


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
