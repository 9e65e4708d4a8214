"""Pretraining losses of SkySense (Sec. 3.3): Multi-Granularity Contrastive Learning (eq. 5-9) and
Cross-Modal Alignment (eq. 10).

L_CL, "the learning loss [7]" between a student feature and its teacher counterpart, is DINO's: both go
through a projection head to K logits; the teacher's are centred and sharpened into a target
distribution, and the student's log-softmax is pulled towards it (cross-entropy). The centre is an EMA of
the teacher's mean output, which with the sharpening keeps the target from collapsing to one logit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from .sinkhorn import sinkhorn_knopp


class ProjectionHead(nn.Module):
    """DINO's head: MLP, L2 normalisation, weight-normalised linear layer to ``out_dim`` logits."""

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 512, bottleneck_dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class DINOLoss(nn.Module):
    """L_CL(student logits, teacher logits), averaged over rows; updates its centre on every call."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        teacher = torch.softmax((teacher_logits.detach() - self.center) / self.teacher_temp, dim=-1)
        loss = -(teacher * F.log_softmax(student_logits / self.student_temp, dim=-1)).sum(dim=-1).mean()
        if self.training:
            with torch.no_grad():
                batch_center = teacher_logits.detach().mean(dim=0, keepdim=True)
                self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return loss


def _pixels(features: Tensor) -> Tensor:
    """(B, T, d, h, w) -> (B * T, h * w, d): each temporal slice's pixel-level features F_i^pix."""
    return features.flatten(0, 1).flatten(2).transpose(1, 2)


def pixel_loss(student: Tensor, teacher: Tensor, head_s: nn.Module, head_t: nn.Module, loss: DINOLoss) -> Tensor:
    """L_pix (eq. 5): L_CL between every pixel feature and its teacher counterpart at the same location,
    averaged over space and time. ``student``/``teacher``: (B, T, d, h, w)."""
    s, t = _pixels(student).flatten(0, 1), _pixels(teacher).flatten(0, 1)
    return loss(head_s(s), head_t(t))


@torch.no_grad()
def cluster_assignment(pixels: Tensor, num_clusters: int, iterations: int = 3) -> Tensor:
    """Unsupervised clustering of one image's pixel features (N_S, d) into N_C clusters with Sinkhorn-Knopp
    (the object level of eq. 6): centres start at evenly spaced pixels, then alternate Sinkhorn assignment
    on cosine similarity and weighted-mean centres. Returns the column-normalised assignment (N_S, N_C)."""
    n = pixels.shape[0]
    k = min(num_clusters, n)
    centres = pixels[torch.linspace(0, n - 1, k, device=pixels.device).long()]
    weights = pixels.new_zeros(n, k)
    for _ in range(iterations):
        similarity = F.normalize(pixels, dim=-1) @ F.normalize(centres, dim=-1).T
        assignment = sinkhorn_knopp(similarity)
        weights = assignment / assignment.sum(dim=0, keepdim=True).clamp_min(1e-12)
        centres = weights.T @ pixels
    return weights


def object_loss(student: Tensor, teacher: Tensor, head_s: nn.Module, head_t: nn.Module, loss: DINOLoss,
                num_clusters: int = 8) -> Tensor:
    """L_obj (eq. 6): the teacher's pixels of each temporal slice are clustered; the student's and the
    teacher's cluster centres f^obj (weighted means under the same assignment, so that they correspond)
    are compared with L_CL, averaged over clusters and time."""
    s_pix, t_pix = _pixels(student), _pixels(teacher)
    s_obj, t_obj = [], []
    for s, t in zip(s_pix, t_pix):
        weights = cluster_assignment(t.detach(), num_clusters)
        s_obj.append(weights.T @ s)
        t_obj.append(weights.T @ t)
    return loss(head_s(torch.cat(s_obj)), head_t(torch.cat(t_obj)))


def image_loss(student: Tensor, teacher: Tensor, head_s: nn.Module, head_t: nn.Module, loss: DINOLoss) -> Tensor:
    """L_img (eq. 7): L_CL between average-pooled image features F_i^img, averaged over time."""
    return loss(head_s(_pixels(student).mean(dim=1)), head_t(_pixels(teacher).mean(dim=1)))


def fine_grained_loss(student: Tensor, teacher: Tensor, head_s: nn.Module, head_t: nn.Module,
                      losses: dict[str, DINOLoss], num_clusters: int = 8) -> dict[str, Tensor]:
    """L_FGCL = L_pix + L_obj + L_img (eq. 8), returned term by term; each level has its own DINO centre."""
    return {
        "pix": pixel_loss(student, teacher, head_s, head_t, losses["pix"]),
        "obj": object_loss(student, teacher, head_s, head_t, losses["obj"], num_clusters),
        "img": image_loss(student, teacher, head_s, head_t, losses["img"]),
    }


def cross_modal_alignment(features: dict[str, Tensor], temperature: float = 0.07, max_pixels: int = 1024,
                          generator: torch.Generator | None = None) -> Tensor:
    """L_align = sum over i != j of L_MMCL(F_i, F_j) (eq. 10), on the student branch.

    L_MMCL is the image-text contrastive loss of [35] applied to pixels: the time-averaged features of two
    modalities at the same location (same sample, same grid cell) are positives, every other pair in the
    batch a negative (InfoNCE, temperature ``temperature``). At most ``max_pixels`` locations, drawn at
    random, enter the similarity matrix. ``features``: {modality: (B, T, d, h, w)} on one grid."""
    names = sorted(features)
    if len(names) < 2:
        return next(iter(features.values())).new_zeros(())
    pooled = {m: F.normalize(features[m].mean(dim=1).flatten(2).transpose(1, 2).flatten(0, 1), dim=-1)
              for m in names}
    n = next(iter(pooled.values())).shape[0]
    if n > max_pixels:
        keep = torch.randperm(n, generator=generator)[:max_pixels].to(pooled[names[0]].device)
        pooled = {m: v[keep] for m, v in pooled.items()}
        n = max_pixels
    labels = torch.arange(n, device=pooled[names[0]].device)
    total = pooled[names[0]].new_zeros(())
    for i in names:
        for j in names:
            if i != j:
                total = total + F.cross_entropy(pooled[i] @ pooled[j].T / temperature, labels)
    return total
