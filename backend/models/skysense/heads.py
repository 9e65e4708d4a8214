"""The classifier head of SkySense: per pixel of the feature grid, and per polygon by pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PixelClassifier(nn.Module):
    """A linear classifier over the fused per-pixel feature F_fus (2d channels): (B, C, h, w) -> logits
    (B, classes, h, w). Its weight rows are the class embeddings that prototype maps compare with."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.linear = nn.Linear(in_chs, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    @property
    def class_weights(self) -> Tensor:
        return self.linear.weight

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def polygon_pool(features: Tensor, polygon_ids: Tensor, num_polygons: int, weights: Tensor | None = None) -> Tensor:
    """Mean feature of each polygon: features (B, C, h, w), polygon_ids (B, h, w) long with 0 for pixels in
    no polygon and 1..num_polygons otherwise, optional weights (B, h, w) (e.g. the share of each grid
    cell inside its polygon) -> (num_polygons, C). A polygon that covers no cell gets NaN, never a guess."""
    if polygon_ids.shape != (features.shape[0], *features.shape[-2:]):
        raise ValueError(f"polygon_ids {tuple(polygon_ids.shape)} do not match features {tuple(features.shape)}")
    channels = features.shape[1]
    flat = features.permute(0, 2, 3, 1).reshape(-1, channels)
    ids = polygon_ids.reshape(-1).long()
    w = torch.ones_like(ids, dtype=flat.dtype) if weights is None else weights.reshape(-1).to(flat.dtype)
    w = torch.where(ids > 0, w, torch.zeros_like(w))
    sums = flat.new_zeros(num_polygons + 1, channels).index_add_(0, ids, flat * w[:, None])
    totals = flat.new_zeros(num_polygons + 1).index_add_(0, ids, w)
    means = sums / totals[:, None]
    means[totals == 0] = float("nan")
    return means[1:]


def classify_polygons(head: PixelClassifier, features: Tensor, polygon_ids: Tensor, num_polygons: int,
                      weights: Tensor | None = None, top_k: int = 3,
                      band_branch: nn.Module | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One class per polygon: pooled features through the head. Returns probabilities (num_polygons,
    classes), and the top-k probabilities and class indices (num_polygons, k); NaN rows stay NaN. With a
    ``band_branch``, ``features`` holds F_fus followed by the band context, and the branch's logits on the
    polygon's mean context are added."""
    pooled = polygon_pool(features, polygon_ids, num_polygons, weights)
    fused = head.linear.in_features
    logits = head.linear(pooled[:, :fused])
    if band_branch is not None:
        logits = logits + band_branch(pooled[:, fused:, None, None])[:, :, 0, 0]
    probabilities = torch.softmax(logits, dim=-1)
    k = min(top_k, probabilities.shape[-1])
    top_p, top_i = probabilities.nan_to_num(-1.0).topk(k, dim=-1)
    return probabilities, top_p, top_i
