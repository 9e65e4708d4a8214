"""The linear classification head of SatDiFuser's evaluation protocol (Sec. 4.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...fusion.base import FeaturePyramid
from ..base import Head


class LinearHead(Head):
    """Global average pooling of the pyramid's levels (all, or only the coarsest), then one linear layer."""

    name = "linear"
    task = "classification"

    def __init__(self, in_chs: Sequence[int], num_classes: int, levels: str = "all", dropout: float = 0.0) -> None:
        super().__init__(in_chs, num_classes)
        if levels not in ("all", "coarsest"):
            raise ValueError(f"levels must be 'all' or 'coarsest', got {levels!r}")
        self.levels, self.dropout = levels, float(dropout)
        pooled_chs = sum(self.in_chs) if levels == "all" else self.in_chs[-1]
        self.classifier = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(pooled_chs, num_classes))

    def config(self) -> dict[str, Any]:
        return {"levels": self.levels, "dropout": self.dropout}

    def forward(self, pyramid: FeaturePyramid, image_hw: tuple[int, int]) -> Tensor:
        self._check(pyramid)
        used = pyramid if self.levels == "all" else pyramid[-1:]
        return self.classifier(torch.cat([level.mean(dim=(2, 3)) for level in used], dim=1))
