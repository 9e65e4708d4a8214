"""Geo-context prototypes: the region-specific prototype set P (N_R x N_p x d), its use in attentional
geo-context integration (eq. 3) and its unsupervised learning (eq. 11-13).

The prototypes are a buffer, not a parameter: no gradient reaches them; they move only by the EMA update
of Geo-Context Prototype Learning, on the student branch during pretraining, and stay fixed downstream
(Fig. 3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from .sinkhorn import sinkhorn_knopp


def cosine_similarity_matrix(features: Tensor, prototypes: Tensor) -> Tensor:
    """M = F P^T / (|F| |P|) (eq. 11): features (..., N, d), prototypes (..., N_p, d) -> (..., N, N_p)."""
    return F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)


class PrototypeBank(nn.Module):
    """P in R^{N_R x N_p x d}; :meth:`select` gives each sample its region's subset P_r.

    ``learned`` are the regions whose prototypes were learned (None: not recorded); :meth:`update` adds its
    region, and the model's configuration saves them (``prototype_regions``).
    """

    def __init__(self, num_regions: int, per_region: int, dim: int, learned: list[int] | None = None) -> None:
        super().__init__()
        prototypes = F.normalize(torch.randn(num_regions, per_region, dim), dim=-1)
        self.register_buffer("prototypes", prototypes)
        self.learned: set[int] | None = None if learned is None else {int(r) for r in learned}

    @property
    def learned_regions(self) -> list[int] | None:
        return None if self.learned is None else sorted(self.learned)

    def unlearned(self, regions: list[int]) -> list[int]:
        """Those of ``regions`` whose prototypes were never learned (empty when nothing is recorded)."""
        if self.learned is None:
            return []
        return sorted({int(r) for r in regions} - self.learned)

    @property
    def num_regions(self) -> int:
        return self.prototypes.shape[0]

    @property
    def per_region(self) -> int:
        return self.prototypes.shape[1]

    def select(self, region: Tensor) -> Tensor:
        """P_r for each sample: region (B,) long -> (B, N_p, d)."""
        return self.prototypes[region]

    @torch.no_grad()
    def update(self, features: Tensor, region: int, momentum: float, sinkhorn_iters: int = 3,
               epsilon: float = 0.05) -> Tensor:
        """One step of Geo-Context Prototype Learning for one region; returns the assignment S.

        features: F_fus^mm of the region's pixels (N_S, d). M is their cosine similarity to P_r (eq. 11);
        Sinkhorn-Knopp turns M into the assignment S (N_S x N_p) under the uniform constraint (every
        prototype receives an equal share of the pixels), which rules out the trivial solution of one
        prototype taking everything. The update value is P_bar_r = S^T F (eq. 12) with each column of S
        normalised to sum 1, so that P_bar_r is the weighted mean of the pixels assigned to each
        prototype and stays on the features' scale; then P_r <- m P_r + (1 - m) P_bar_r (eq. 13).
        """
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        features = features.detach().to(self.prototypes.dtype)
        current = self.prototypes[region]
        similarity = cosine_similarity_matrix(features, current)
        assignment = sinkhorn_knopp(similarity, iterations=sinkhorn_iters, epsilon=epsilon)
        weights = assignment / assignment.sum(dim=0, keepdim=True).clamp_min(1e-12)
        target = weights.transpose(0, 1) @ features
        self.prototypes[region] = momentum * current + (1.0 - momentum) * target
        self.learned = (self.learned or set()) | {int(region)}
        return assignment


class GeoContextIntegration(nn.Module):
    """F_fus = Concat[F_fus^mm, Softmax(Q K^T / sqrt(d)) V] with Q = F_fus^mm, K = V = P_r (eq. 3).

    ``forward(fused, prototypes)``: fused (B, N_S, d), prototypes (B, N_p, d) -> (F_fus (B, N_S, 2d),
    attention weights (B, N_S, N_p)). Eq. 3 has no projections, so this module has no parameters.
    """

    def forward(self, fused: Tensor, prototypes: Tensor) -> tuple[Tensor, Tensor]:
        scale = fused.shape[-1] ** -0.5
        weights = torch.softmax(fused @ prototypes.transpose(-1, -2) * scale, dim=-1)
        context = weights @ prototypes
        return torch.cat([fused, context], dim=-1), weights
