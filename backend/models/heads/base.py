"""What every head shares: it reads a feature pyramid (finest level first) and the input's size."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..fusion.base import FeaturePyramid, norm_groups


class ConvNormAct(nn.Sequential):
    """Convolution, group norm, ReLU. Group norm, not batch norm: few-shot batches are tiny and the
    coarsest pooled maps are 1x1, where batch statistics are undefined."""

    def __init__(self, in_chs: int, out_chs: int, kernel_px: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_px, padding=kernel_px // 2, bias=False),
            nn.GroupNorm(norm_groups(out_chs), out_chs),
            nn.ReLU(inplace=True),
        )


class Head(nn.Module, abc.ABC):
    """``forward(pyramid, image_hw)``: logits (B, classes, H, W) for segmentation, (B, classes) for
    classification."""

    name = ""
    task = "segmentation"

    def __init__(self, in_chs: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not in_chs:
            raise ValueError("a head needs at least one pyramid level")
        self.in_chs = [int(c) for c in in_chs]
        self.num_classes = int(num_classes)

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this head with :func:`create_head` (besides in_chs, num_classes)."""
        return {}

    def _check(self, pyramid: FeaturePyramid) -> None:
        if len(pyramid) != len(self.in_chs):
            raise ValueError(f"expected a pyramid of {len(self.in_chs)} levels, got {len(pyramid)}")

    @abc.abstractmethod
    def forward(self, pyramid: FeaturePyramid, image_hw: tuple[int, int]) -> Tensor:
        """Logits at the image size (B, K, H, W), or (B, K) for a classification head."""
