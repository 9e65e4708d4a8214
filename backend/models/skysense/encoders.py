"""Spatial encoders g_HR, g_Ms, g_SAR (Sec. 3.2, eq. 1) built from any timm backbone, and the adapter that
brings each one's last feature map to the fusion width ``d``.

Encoders are plain timm models (``pretrained=False``; weights come from Terrafuse checkpoints or the
converter), so their state-dict keys are timm's own and a timm checkpoint of the same architecture loads
into them. Their last feature map comes from ``forward_intermediates``, which every timm family used here
(ResNet, EfficientNet, ViT, Swin, SwinV2) implements, ViTs included (tokens reshaped to a map).
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from .config import EncoderConfig


def _extra_norm_hook(block: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    return block.norm3(output)


class SpatialEncoder(nn.Module):
    """``forward(x)``: images (N, C, H, W) -> the backbone's last feature map (N, out_chs, h, w)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        kwargs = {"num_classes": 0, **config.timm_kwargs}
        self.backbone = timm.create_model(config.timm_name, pretrained=False, in_chans=config.backbone_chans,
                                          **kwargs)
        self.out_chs = int(self.backbone.feature_info[-1]["num_chs"])
        self.reduction = int(self.backbone.feature_info[-1]["reduction"])
        self.in_chans = config.in_chans
        for stage, index in config.extra_norm_blocks:
            # SwinV2-H (official HR checkpoint) ends some blocks with a LayerNorm that timm's block lacks;
            # a forward hook adds it without renaming the block's own weights.
            block = self.backbone.layers[stage].blocks[index]
            block.norm3 = nn.LayerNorm(block.norm2.normalized_shape)
            block.register_forward_hook(_extra_norm_hook)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        return features[-1]


class ModalityAdapter(nn.Module):
    """Features of one modality to width ``d``: the official pixel-shuffle head (``head_s2`` / ``head_s1``,
    optional) then a linear projection (the official fusion's input projection)."""

    def __init__(self, in_chs: int, dim: int, up_scale: int = 1, up_chs: int = 0) -> None:
        super().__init__()
        self.up_scale = int(up_scale)
        if self.up_scale > 1:
            if up_chs < 1:
                raise ValueError("up_chs must be positive when up_scale > 1")
            self.up = nn.Sequential(nn.Conv2d(in_chs, up_scale**2 * up_chs, 1), nn.PixelShuffle(up_scale))
            in_chs = up_chs
        else:
            self.up = nn.Identity()
        self.proj = nn.Linear(in_chs, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def resize_to_grid(x: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Bring a feature map (N, d, h, w) onto the fused grid: area averaging when the grid is coarser (a
    high-resolution map onto the Sentinel-2 grid), bilinear interpolation when it is finer."""
    if tuple(x.shape[-2:]) == tuple(grid_hw):
        return x
    if x.shape[-2] >= grid_hw[0] and x.shape[-1] >= grid_hw[1]:
        return F.adaptive_avg_pool2d(x, grid_hw)
    return F.interpolate(x, size=grid_hw, mode="bilinear", align_corners=False)


