"""SkySense (Guo et al., CVPR 2024): a multi-modal remote-sensing foundation model with a factorized
spatiotemporal encoder, day-of-year temporal encoding and geo-context prototypes.

Modules, one concept each: ``config`` (sizes), ``encoders`` (g_i with timm), ``temporal`` (P_DTPE, extra token,
fusion transformer; eq. 1-2), ``regions`` (the latitude/longitude grid of regions), ``prototypes`` (eq. 3,
eq. 11-13), ``model`` (the whole), ``heads`` (per pixel, per polygon), ``sinkhorn``, ``ema``, ``losses``
(eq. 5-10), ``pretraining``, ``convert`` (official checkpoints), ``prototype_map`` (Fig. 5), ``dates`` and
``band_mapping`` (inputs).
"""

from __future__ import annotations

from .config import MODALITIES, EncoderConfig, SkySenseConfig
from .model import SkySense, count_parameters
from .registry import create_skysense, list_skysense, skysense_config

__all__ = ["MODALITIES", "EncoderConfig", "SkySense", "SkySenseConfig", "count_parameters", "create_skysense",
           "list_skysense", "skysense_config"]
