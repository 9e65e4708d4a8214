"""The UPerNet decoder (Xiao et al., "Unified Perceptual Parsing", ECCV 2018): a pyramid pooling module
on the coarsest level, a feature pyramid network top-down, and the levels fused at the finest one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

from ...fusion.base import FeaturePyramid
from ..base import ConvNormAct


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """PSPNet's pooling: the map averaged to 1x1, 2x2, 3x3 and 6x6 bins, projected, upsampled back and
    concatenated with the map itself, then a 3x3 convolution. Works on maps smaller than the bins.

    The pooled stages have no norm: a 1x1 bin holds one value per channel, which group norm would
    flatten (and batch norm cannot estimate from a few-shot batch)."""

    def __init__(self, in_chs: int, out_chs: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_chs, out_chs, 1), nn.ReLU(inplace=True)) for _ in self.bins)
        self.bottleneck = ConvNormAct(in_chs + len(self.bins) * out_chs, out_chs, kernel_px=3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [_resize(stage(F.adaptive_avg_pool2d(x, bins)), size) for bins, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """Pyramid (finest first) -> one map of ``chs`` channels at the finest level's resolution."""

    def __init__(self, in_chs: Sequence[int], chs: int = 128, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(in_chs[-1], chs, bins)
        self.laterals = nn.ModuleList(ConvNormAct(c, chs) for c in in_chs[:-1])
        self.smooth = nn.ModuleList(ConvNormAct(chs, chs, kernel_px=3) for _ in in_chs[:-1])
        self.fuse = ConvNormAct(len(in_chs) * chs, chs, kernel_px=3)

    def forward(self, pyramid: FeaturePyramid) -> Tensor:
        top = self.ppm(pyramid[-1])
        outputs = [top]
        # Top-down: from the second coarsest level to the finest.
        for index in range(len(pyramid) - 2, -1, -1):
            lateral = self.laterals[index](pyramid[index])
            top = lateral + _resize(top, lateral.shape[-2:])
            outputs.insert(0, self.smooth[index](top))
        finest_hw = outputs[0].shape[-2:]
        return self.fuse(torch.cat([outputs[0]] + [_resize(o, finest_hw) for o in outputs[1:]], dim=1))
