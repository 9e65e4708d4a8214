"""Mixture-of-experts joint fusion (SatDiFuser Sec. 3.4, eq. 3-4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureFusion, FeaturePyramid, stack_blocks


class PixelMoE(nn.Module):
    """``f_MoE(X) = sum_e gamma_e(X) f_e(X)`` (eq. 4), routed per pixel with top-k gating.

    Each expert ``f_e`` is a two-layer per-pixel MLP (1x1 convolutions). The gate ``gamma`` is a 1x1
    convolution to E logits; at each pixel the k largest are kept and softmax-normalised, the others
    are zero (Shazeer et al. 2017, eq. 3-5, without the noise term). All experts run densely as one
    grouped convolution and unrouted outputs are multiplied by zero: with E = 8 small experts that is
    cheaper than gathering pixels per expert.
    """

    def __init__(self, in_chs: int, out_chs: int, num_experts: int, top_k: int, hidden_chs: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in 1..{num_experts}, got {top_k}")
        self.num_experts, self.top_k, self.out_chs = num_experts, top_k, out_chs
        self.gate = nn.Conv2d(in_chs, num_experts, 1)
        self.experts_in = nn.Conv2d(in_chs, num_experts * hidden_chs, 1)
        self.experts_out = nn.Conv2d(num_experts * hidden_chs, num_experts * out_chs, 1, groups=num_experts)
        self.activation = nn.GELU()

    def gates(self, x: Tensor) -> Tensor:
        """gamma(X): (B, E, h, w), k non-zero weights per pixel that sum to one."""
        logits = self.gate(x)
        top_values, top_indices = logits.topk(self.top_k, dim=1)
        return torch.zeros_like(logits).scatter(1, top_indices, top_values.softmax(dim=1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mixed output (B, out_chs, h, w) and the gates (B, E, h, w)."""
        gates = self.gates(x)
        batch, _, height, width = x.shape
        experts = self.experts_out(self.activation(self.experts_in(x)))
        experts = experts.view(batch, self.num_experts, self.out_chs, height, width)
        return (gates.unsqueeze(2) * experts).sum(dim=1), gates


def importance_loss(gates: Tensor) -> Tensor:
    """Shazeer et al. 2017's balancing term, CV(Importance)^2 with Importance the summed gate per expert."""
    importance = gates.sum(dim=(0, 2, 3))
    return importance.var(unbiased=False) / (importance.mean() ** 2 + 1e-10)


class MoEFusion(FeatureFusion):
    """Per scale s and timestep t, ``X_{t,s} = Concat_l(F^l_{t,s})`` (eq. 3) goes through one MoE layer
    shared by the timesteps of that scale (eq. 4); ``X_s = sum_t Y_{t,s}``.

    Defaults follow Sec. 4.4: E = 8 experts, top-k = 2. The paper mentions no balancing loss; set
    ``balance_weight`` > 0 to add Shazeer's importance loss through :meth:`auxiliary_loss`.
    """

    name = "moe"

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_chs: int = 128, num_experts: int = 8,
                 top_k: int = 2, hidden_chs: int | None = None, balance_weight: float = 0.0) -> None:
        super().__init__(feature_info, out_chs)
        self.num_experts, self.top_k = int(num_experts), int(top_k)
        self.hidden_chs = int(hidden_chs or out_chs)
        self.balance_weight = float(balance_weight)
        self.experts = nn.ModuleList(
            PixelMoE(sum(layout.block_chs), out_chs, self.num_experts, self.top_k, self.hidden_chs)
            for layout in self.layouts
        )
        #: Per scale, the gates of the last forward pass (B * T_sel, E, h, w), for the balancing loss.
        self.last_gates: list[Tensor] = []

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_experts": self.num_experts, "top_k": self.top_k,
                "hidden_chs": self.hidden_chs, "balance_weight": self.balance_weight}

    def auxiliary_loss(self) -> Tensor | None:
        if self.balance_weight <= 0 or not self.last_gates:
            return None
        return self.balance_weight * sum(importance_loss(gates) for gates in self.last_gates)

    def forward(self, features: Sequence[Tensor]) -> FeaturePyramid:
        self._check(features)
        pyramid = []
        self.last_gates = []
        for layout, moe in zip(self.layouts, self.experts):
            timesteps = len(layout.timesteps)
            # All timesteps of a scale in one batch: (T_sel * B, C_s, h, w).
            joint = torch.cat([torch.cat(stack_blocks(features, layout, t), dim=1) for t in range(timesteps)])
            mixed, gates = moe(joint)
            self.last_gates.append(gates)
            pyramid.append(mixed.view(timesteps, -1, *mixed.shape[1:]).sum(dim=0))
        return pyramid
