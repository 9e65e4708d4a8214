"""Diffusion backbones (Stable Diffusion 2 architecture, DiffusionSat) and their features (SatDiFuser Sec. 3.1)."""

from __future__ import annotations

from .backbone import DiffusionBackbone, load_backbone_folder
from .extractor import FEATURE_KINDS, DiffusionFeatureExtractor
from .fast_path import InferenceSettings
from .registry import BACKBONES, BackboneConfig, list_backbones, load_backbone, register_backbone

__all__ = [
    "BACKBONES", "FEATURE_KINDS", "BackboneConfig", "DiffusionBackbone", "DiffusionFeatureExtractor",
    "InferenceSettings", "list_backbones", "load_backbone", "load_backbone_folder", "register_backbone",
]
