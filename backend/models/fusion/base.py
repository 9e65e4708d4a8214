"""What every fusion shares: the layout of the extractor's features and the pyramid it returns.

A fusion reads the extractor's flat list of features (one tensor per ``feature_info`` entry) and
returns a :data:`FeaturePyramid`: one tensor per scale s, finest first as in the paper's
``{X_1, ..., X_S}`` (``X_1`` has the largest resolution), each ``(B, out_chs, H / reduction, W / reduction)``.
Within a scale, a *block* l is a feature site of the UNet (``up1.attn1.0``); the same block appears once
per timestep t, as the paper's ``F^l_{t,s}``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

#: One tensor per scale, finest first.
FeaturePyramid = list[Tensor]

#: The keys of a feature_info entry that a fusion's weights depend on; saved with a head.
FEATURE_INFO_KEYS = ("name", "timestep", "kind", "level", "num_chs", "reduction")


def block_name(info: dict[str, Any]) -> str:
    """The block of a feature without its timestep: ``t100/up1.attn1.0`` -> ``up1.attn1.0``."""
    name = str(info["name"])
    return name.split("/", 1)[1] if "/" in name else name


@dataclass(frozen=True)
class ScaleLayout:
    """The features of one scale s: their indices in the extractor's output, grouped as (t, l)."""

    level: int
    reduction: int
    timesteps: tuple[int, ...]
    blocks: tuple[str, ...]
    block_chs: tuple[int, ...]
    #: ``indices[t][l]``: position in the extractor's output of block l at timestep t.
    indices: tuple[tuple[int, ...], ...]


def scale_layouts(feature_info: Sequence[dict[str, Any]]) -> list[ScaleLayout]:
    """Group ``feature_info`` by UNet level, finest scale first; every block must exist at every timestep."""
    if not feature_info:
        raise ValueError("feature_info is empty: a fusion needs at least one feature")
    by_level: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for index, info in enumerate(feature_info):
        by_level.setdefault(int(info["level"]), []).append((index, info))
    layouts = []
    for level, entries in by_level.items():
        reductions = {int(info["reduction"]) for _, info in entries}
        if len(reductions) != 1:
            raise ValueError(f"features of level {level} have several reductions: {sorted(reductions)}")
        timesteps = tuple(sorted({int(info["timestep"]) for _, info in entries}))
        blocks: list[str] = []
        chs: dict[str, int] = {}
        where: dict[tuple[int, str], int] = {}
        for index, info in entries:
            block = block_name(info)
            if block not in chs:
                blocks.append(block)
                chs[block] = int(info["num_chs"])
            elif chs[block] != int(info["num_chs"]):
                raise ValueError(f"block {block} has {chs[block]} and {info['num_chs']} channels")
            where[(int(info["timestep"]), block)] = index
        missing = [f"t{t}/{b}" for t in timesteps for b in blocks if (t, b) not in where]
        if missing:
            raise ValueError(f"every block needs every timestep; missing {', '.join(missing[:4])}")
        layouts.append(ScaleLayout(
            level=level, reduction=reductions.pop(), timesteps=timesteps, blocks=tuple(blocks),
            block_chs=tuple(chs[b] for b in blocks),
            indices=tuple(tuple(where[(t, b)] for b in blocks) for t in timesteps),
        ))
    return sorted(layouts, key=lambda layout: layout.reduction)


def projection(in_chs: int, out_chs: int) -> nn.Sequential:
    """Phi_s^l of eq. 1-2: a 1x1 convolution to the scale's width, then a group norm.

    The norm puts blocks of very different magnitudes (ResNet activations, attention outputs) on one
    footing before they are weighted, which the learnt weights alone cannot do per channel.
    """
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.GroupNorm(norm_groups(out_chs), out_chs))


def norm_groups(chs: int, max_groups: int = 32, min_group_chs: int = 4) -> int:
    """The largest group count up to ``max_groups`` that divides ``chs`` into groups of at least
    ``min_group_chs`` channels: on a 1x1 map (the coarsest level of a 64 px tile) a one-channel group
    would normalise every value to zero."""
    most = max(1, min(max_groups, chs // min_group_chs))
    return next(g for g in range(most, 0, -1) if chs % g == 0)


class FeatureFusion(nn.Module, abc.ABC):
    """Base of the fusions: feature layout, output widths and the saved configuration."""

    name = ""

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_chs: int) -> None:
        super().__init__()
        if out_chs < 1:
            raise ValueError(f"out_chs must be positive, got {out_chs}")
        self.feature_info = [{k: info[k] for k in FEATURE_INFO_KEYS} for info in feature_info]
        self.layouts = scale_layouts(self.feature_info)
        self.out_chs = int(out_chs)

    @property
    def pyramid_chs(self) -> list[int]:
        """Channels of each pyramid level, finest first."""
        return [self.out_chs] * len(self.layouts)

    @property
    def pyramid_reductions(self) -> list[int]:
        """Stride in image pixels of each pyramid level, finest first."""
        return [layout.reduction for layout in self.layouts]

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this fusion with :func:`create_fusion` (besides feature_info)."""
        return {"out_chs": self.out_chs}

    def auxiliary_loss(self) -> Tensor | None:
        """A loss term the fusion adds to the task loss after a forward pass (None: none)."""
        return None

    def _check(self, features: Sequence[Tensor]) -> None:
        if len(features) != len(self.feature_info):
            raise ValueError(f"expected {len(self.feature_info)} feature maps, got {len(features)}")

    @abc.abstractmethod
    def forward(self, features: Sequence[Tensor]) -> FeaturePyramid:
        """The fused pyramid, finest scale first (the paper's X_1..X_S)."""


def stack_blocks(features: Sequence[Tensor], layout: ScaleLayout, t: int) -> list[Tensor]:
    """The features ``F^l_{t,s}`` of all blocks l of ``layout`` at its t-th timestep."""
    return [features[index] for index in layout.indices[t]]
