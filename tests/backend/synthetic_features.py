"""Feature lists shaped like a diffusion extractor's output, without a backbone: the ``feature_info`` of a
tiny Stable-Diffusion-2 UNet (4 up blocks, strides 64..8 px) and random tensors that match it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: (level, reduction in image px, channels) of each up block, coarsest first, as the extractor reports them.
TINY_LEVELS = ((0, 64, 16), (1, 32, 16), (2, 16, 8), (3, 8, 8))


def tiny_feature_info(timesteps: Sequence[int] = (1, 100), kinds: Sequence[str] = ("resnet", "attn1"),
                      blocks_per_level: int = 2) -> list[dict[str, Any]]:
    """Entries in the extractor's order: timestep-major, then level, then block."""
    info = []
    for t in timesteps:
        for level, reduction, chs in TINY_LEVELS:
            for j in range(blocks_per_level):
                for kind in kinds:
                    # Attention outputs get other widths than ResNets, as projections must cope with.
                    num_chs = chs if kind == "resnet" else chs + 4
                    info.append({"name": f"t{t}/up{level}.{kind}.{j}", "timestep": t, "kind": kind, "level": level,
                                 "num_chs": num_chs, "reduction": reduction})
    return info


def random_features(feature_info: Sequence[dict[str, Any]], image_hw: tuple[int, int], batch: int = 2,
                    seed: int = 0) -> list[torch.Tensor]:
    """One tensor per entry, ``(batch, num_chs, ceil(H / reduction), ceil(W / reduction))``."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_hw
    return [torch.randn(batch, info["num_chs"], -(-height // info["reduction"]), -(-width // info["reduction"]),
                        generator=generator) for info in feature_info]
