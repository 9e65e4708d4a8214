"""Small SkySense configurations for the tests, and inputs for them (seconds on two CPU cores)."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch

from backend.models.skysense import SkySenseConfig, skysense_config
from backend.models.skysense.config import HR_BANDS, S1_BANDS, S2_BANDS, EncoderConfig

CLASSES = [{"id": 1, "name": "water", "colour": "#1f78b4"}, {"id": 2, "name": "crop", "colour": "#33a02c"},
           {"id": 3, "name": "built", "colour": "#e31a1c"}]
#: Every non-empty subset of the modalities, as in the paper's tables.
SUBSETS = [s for n in (1, 2, 3) for s in combinations(("hr", "s2", "s1"), n)]


def micro_config(**overrides: Any) -> SkySenseConfig:
    """skysense-tiny with one-block ViTs: same code paths, a fraction of the time."""
    config = skysense_config("skysense-tiny", **overrides)
    for m in ("s2", "s1"):
        if m in config.encoders:
            config.encoders[m].timm_kwargs = {**config.encoders[m].timm_kwargs, "depth": 1, "embed_dim": 32,
                                              "num_heads": 2}
            config.encoders[m].up_chs = 16
    return config


def paper_layout_config() -> SkySenseConfig:
    """The paper's architecture (SwinV2 with extra norms, patch-4 ViTs with the pixel-shuffle head, one
    projection width for all modalities) at a small size: what the converter tests use."""
    swin = {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 4, "img_size": 64,
            "strict_img_size": False, "dynamic_img_size": True, "drop_path_rate": 0.0}
    vit = {"patch_size": 4, "img_size": 16, "depth": 2, "embed_dim": 32, "num_heads": 2, "global_pool": "avg",
           "final_norm": False, "dynamic_img_size": True, "drop_path_rate": 0.0, "class_token": False}
    return SkySenseConfig(
        name="paper-layout-small",
        encoders={
            "hr": EncoderConfig("swinv2_base_window8_256", list(HR_BANDS), swin, extra_norm_blocks=[[2, 1]],
                                temporal=False),
            "s2": EncoderConfig("vit_large_patch16_224", list(S2_BANDS), dict(vit), up_scale=4, up_chs=128),
            "s1": EncoderConfig("vit_large_patch16_224", list(S1_BANDS), dict(vit), up_scale=4, up_chs=128),
        },
        dim=32, fusion_depth=2, fusion_heads=4, region_grid=(2, 2), prototypes_per_region=4,
    )


def make_inputs(modalities: tuple[str, ...], batch: int = 1, seed: int = 0, hr_px: int = 32, s2_px: int = 8,
                times: tuple[int, int] = (3, 2)) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    inputs: dict[str, Any] = {"lonlat": torch.tensor([[5.0, 45.0], [-70.0, -10.0]])[:batch]}
    if "hr" in modalities:
        inputs["hr"] = torch.randn(batch, len(HR_BANDS), hr_px, hr_px, generator=g)
    for m, t, bands in (("s2", times[0], S2_BANDS), ("s1", times[1], S1_BANDS)):
        if m in modalities:
            inputs[m] = torch.randn(batch, t, len(bands), s2_px, s2_px, generator=g)
            inputs[f"{m}_doy"] = torch.randint(1, 366, (batch, t), generator=g)
    return inputs
