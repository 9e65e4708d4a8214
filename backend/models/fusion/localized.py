"""Localized (pixel-wise) weighted fusion (SatDiFuser Sec. 3.3, eq. 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureFusion, FeaturePyramid, norm_groups, projection, stack_blocks


class PixelGate(nn.Module):
    """The "lightweight gating function" of Sec. 3.3: reference feature -> one weight map per (t, l)."""

    def __init__(self, chs: int, num_weights: int, hidden_chs: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(chs, hidden_chs, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups(hidden_chs), hidden_chs),
            nn.GELU(),
            nn.Conv2d(hidden_chs, num_weights, 1),
        )
        # A near-uniform start (every pixel about averages all features) that still passes gradients
        # back to the first layer, which an all-zero last layer would not.
        nn.init.normal_(self.layers[-1].weight, std=0.01)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, reference: Tensor) -> Tensor:
        return self.layers(reference).softmax(dim=1)


class LocalizedWeightedFusion(FeatureFusion):
    """``X_s(u,v) = sum_t sum_l W^l_{t,s}(u,v) * Phi_s^l(F^l_{t,s})(u,v)`` (eq. 2).

    The reference feature of a scale is the mean of its projected features (the raw blocks may differ
    in width); a small convolutional gate turns it into pixel-wise weights, normalised with a softmax
    over the (block, timestep) pairs at each pixel.
    """

    name = "localized"

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_chs: int = 128, gate_chs: int = 32) -> None:
        super().__init__(feature_info, out_chs)
        self.gate_chs = int(gate_chs)
        self.projections = nn.ModuleList(
            nn.ModuleList(projection(chs, out_chs) for chs in layout.block_chs) for layout in self.layouts
        )
        self.gates = nn.ModuleList(
            PixelGate(out_chs, len(layout.timesteps) * len(layout.blocks), self.gate_chs) for layout in self.layouts
        )
        self.last_weights: list[Tensor] = []

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gate_chs": self.gate_chs}

    def forward(self, features: Sequence[Tensor]) -> FeaturePyramid:
        self._check(features)
        pyramid = []
        self.last_weights = []
        for layout, phis, gate in zip(self.layouts, self.projections, self.gates):
            # (B, T_sel * L_sel, C, h, w), ordered t-major like the gate's output channels.
            projected = torch.stack([
                phi(feature) for t in range(len(layout.timesteps))
                for phi, feature in zip(phis, stack_blocks(features, layout, t))
            ], dim=1)
            weights = gate(projected.mean(dim=1))  # (B, T_sel * L_sel, h, w)
            self.last_weights.append(weights.detach())
            pyramid.append((weights.unsqueeze(2) * projected).sum(dim=1))
        return pyramid
