"""Global weighted fusion (SatDiFuser Sec. 3.2, eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureFusion, FeaturePyramid, projection, stack_blocks


class GlobalWeightedFusion(FeatureFusion):
    """``X_s = sum_t sum_l w_{l,t} * Phi_s^l(F^l_{t,s})`` (eq. 1), the multi-scale pyramid kept.

    One projection ``Phi_s^l`` per block, shared by its timesteps; one learnable scalar per
    (block, timestep), normalised with a softmax over the pairs of a scale as in Diffusion
    Hyperfeatures' mixing weights (which eq. 1 follows), so the fused scale keeps the magnitude of
    one projected feature whatever the number of blocks and timesteps.
    """

    name = "global"

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_chs: int = 128) -> None:
        super().__init__(feature_info, out_chs)
        self.projections = nn.ModuleList(
            nn.ModuleList(projection(chs, out_chs) for chs in layout.block_chs) for layout in self.layouts
        )
        # Logits of w_{l,t}, (T_sel, L_sel) per scale; zeros start from a plain average.
        self.weight_logits = nn.ParameterList(
            nn.Parameter(torch.zeros(len(layout.timesteps), len(layout.blocks))) for layout in self.layouts
        )

    def weights(self) -> list[Tensor]:
        """The normalised ``w_{l,t}`` of each scale, (T_sel, L_sel), summing to one."""
        return [logits.flatten().softmax(0).view_as(logits) for logits in self.weight_logits]

    def forward(self, features: Sequence[Tensor]) -> FeaturePyramid:
        self._check(features)
        pyramid = []
        for layout, phis, weights in zip(self.layouts, self.projections, self.weights()):
            fused: Tensor | None = None
            for t in range(len(layout.timesteps)):
                for block, (phi, feature) in enumerate(zip(phis, stack_blocks(features, layout, t))):
                    term = weights[t, block] * phi(feature)
                    fused = term if fused is None else fused + term
            pyramid.append(fused)
        return pyramid
