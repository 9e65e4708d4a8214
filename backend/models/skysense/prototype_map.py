"""Geo-prototype maps (Fig. 5): every pixel's fused feature assigned to the most similar prototype of its
region, with the similarity as a second band; what a click on the map shows.

Pure tensor functions: the raster writers turn ``assignment`` into a paletted raster (one colour per
prototype, :func:`prototype_palette`) and ``similarity`` into a float band.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from .prototypes import cosine_similarity_matrix


@dataclass
class PrototypeMap:
    assignment: Tensor  # (B, h, w) long: index of the most similar prototype of the region
    similarity: Tensor  # (B, h, w) float: its cosine similarity
    region: Tensor  # (B,) long


def prototype_map(fused: Tensor, prototypes: Tensor, region: Tensor) -> PrototypeMap:
    """fused F_fus^mm (B, d, h, w), the whole prototype set (N_R, N_p, d), region (B,) -> the map."""
    b, d, h, w = fused.shape
    similarity = cosine_similarity_matrix(fused.flatten(2).transpose(1, 2), prototypes[region].to(fused))
    best, index = similarity.max(dim=-1)
    return PrototypeMap(index.reshape(b, h, w), best.reshape(b, h, w), region)


def prototype_map_from_similarity(similarity: Tensor, region: Tensor) -> PrototypeMap:
    """The same from a model output's ``prototype_similarity`` (B, N_p, h, w)."""
    best, index = similarity.max(dim=1)
    return PrototypeMap(index, best, region)


def similarities_at(similarity: Tensor, row: int, col: int, sample: int = 0) -> list[float]:
    """What an identify click lists: the cosine similarity of one pixel to every prototype of its region."""
    return [float(v) for v in similarity[sample, :, row, col]]


def nearest_class_per_prototype(prototypes: Tensor, class_weights: Tensor,
                                class_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The class each prototype is nearest to, given a trained head: prototypes (N_p, d) of one region and
    the head's weights (classes, 2d) over F_fus = [F_fus^mm, context]. A prototype p stands for pixels whose
    feature is p and whose context is (close to) p itself, so it is classified as the feature [p, p]; the
    result is the head's arg-max class and its probability, per prototype. A head over d channels (the
    fused feature alone) is also accepted."""
    d = prototypes.shape[-1]
    if class_weights.shape[-1] == 2 * d:
        inputs = torch.cat([prototypes, prototypes], dim=-1)
    elif class_weights.shape[-1] == d:
        inputs = prototypes
    else:
        raise ValueError(f"head width {class_weights.shape[-1]} fits neither d={d} nor 2d={2 * d}")
    logits = F.linear(inputs.to(class_weights), class_weights, class_bias)
    probability, index = torch.softmax(logits, dim=-1).max(dim=-1)
    return index, probability


def prototype_palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct RGB colours (golden-angle hues, two lightness levels), one per prototype."""
    colours = []
    for i in range(count):
        hue = (i * 0.381966) % 1.0
        lightness = 0.45 if i % 2 == 0 else 0.62
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours
