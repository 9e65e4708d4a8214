"""UPerNet as SatDiFuser's segmentation head (Sec. 4.1): decoder, 1x1 classifier, upsampled to the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

from ...fusion.base import FeaturePyramid
from ..base import Head
from .decoder import UPerNetDecoder


class UPerNetHead(Head):
    name = "upernet"

    def __init__(self, in_chs: Sequence[int], num_classes: int, decoder_chs: int = 128,
                 pool_bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__(in_chs, num_classes)
        self.decoder_chs, self.pool_bins, self.dropout = int(decoder_chs), tuple(pool_bins), float(dropout)
        self.decoder = UPerNetDecoder(self.in_chs, self.decoder_chs, self.pool_bins)
        self.classifier = nn.Sequential(nn.Dropout2d(self.dropout), nn.Conv2d(self.decoder_chs, num_classes, 1))

    def config(self) -> dict[str, Any]:
        return {"decoder_chs": self.decoder_chs, "pool_bins": list(self.pool_bins), "dropout": self.dropout}

    def forward(self, pyramid: FeaturePyramid, image_hw: tuple[int, int]) -> Tensor:
        self._check(pyramid)
        logits = self.classifier(self.decoder(pyramid))
        return F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
