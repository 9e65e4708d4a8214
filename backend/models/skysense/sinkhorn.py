"""The Sinkhorn-Knopp algorithm as SwAV [6] uses it, for the prototype assignment (eq. 11-12) and the
object-level clustering of eq. 6.

Written here rather than imported: it is a dozen lines, and no well-kept package ships it for torch tensors
(POT works on numpy arrays and has no batched, autograd-free variant for this use; SwAV's own code is a
research script, not a library).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, iterations: int = 3, epsilon: float = 0.05) -> Tensor:
    """Soft assignment Q (N x K) of N samples to K clusters from their scores (N x K), e.g. similarities.

    Q maximises <Q, scores> + epsilon H(Q) over the transportation polytope in which every cluster holds
    N / K samples and every sample has mass 1: the uniform constraint that prevents all samples from
    collapsing onto one cluster. Returned rows sum to 1 (each sample's assignment distribution). Runs in
    float64 with the maximum subtracted so that ``exp`` cannot overflow for small ``epsilon``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (samples, clusters), got shape {tuple(scores.shape)}")
    n, k = scores.shape
    q = (scores.double() - scores.double().max()) / epsilon
    q = torch.exp(q).transpose(0, 1)  # K x N
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)  # every cluster: total mass 1 / K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample: total mass 1 / N
        q /= n
    q *= n  # rows of the result sum to 1
    return q.transpose(0, 1).to(scores.dtype)
