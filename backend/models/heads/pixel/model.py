"""A light per-pixel head for few-shot training from drawn labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

from ...fusion.base import FeaturePyramid
from ..base import ConvNormAct, Head


class PixelHead(Head):
    """Every level upsampled to the finest, concatenated, then 1x1 convolutions to the classes.

    No spatial kernels: a few hundred labelled pixels train it in seconds, and the fused diffusion
    features already carry the context.
    """

    name = "pixel"

    def __init__(self, in_chs: Sequence[int], num_classes: int, hidden_chs: int = 64) -> None:
        super().__init__(in_chs, num_classes)
        self.hidden_chs = int(hidden_chs)
        self.mix = ConvNormAct(sum(self.in_chs), self.hidden_chs)
        self.classifier = nn.Conv2d(self.hidden_chs, num_classes, 1)

    def config(self) -> dict[str, Any]:
        return {"hidden_chs": self.hidden_chs}

    def forward(self, pyramid: FeaturePyramid, image_hw: tuple[int, int]) -> Tensor:
        self._check(pyramid)
        finest_hw = pyramid[0].shape[-2:]
        stacked = torch.cat([pyramid[0]] + [
            F.interpolate(level, size=finest_hw, mode="bilinear", align_corners=False) for level in pyramid[1:]
        ], dim=1)
        logits = self.classifier(self.mix(stacked))
        return F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
