"""Fusions of multi-scale, multi-timestep diffusion features into a feature pyramid (SatDiFuser Sec. 3.2-3.4).

``create_fusion(name, feature_info, **kwargs)`` builds one by name, as timm's ``create_model`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import FEATURE_INFO_KEYS, FeatureFusion, FeaturePyramid, ScaleLayout, scale_layouts
from .global_weighted import GlobalWeightedFusion
from .localized import LocalizedWeightedFusion
from .moe import MoEFusion

FUSIONS: dict[str, type[FeatureFusion]] = {
    GlobalWeightedFusion.name: GlobalWeightedFusion,
    LocalizedWeightedFusion.name: LocalizedWeightedFusion,
    MoEFusion.name: MoEFusion,
}


def create_fusion(name: str, feature_info: Sequence[dict[str, Any]], **kwargs: Any) -> FeatureFusion:
    """A fusion by name ("global", "localized", "moe") over the features described by ``feature_info``."""
    try:
        cls = FUSIONS[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; known: {', '.join(FUSIONS)}") from None
    return cls(feature_info, **kwargs)


__all__ = [
    "FEATURE_INFO_KEYS", "FUSIONS", "FeatureFusion", "FeaturePyramid", "GlobalWeightedFusion",
    "LocalizedWeightedFusion", "MoEFusion", "ScaleLayout", "create_fusion", "scale_layouts",
]
