"""Task heads on a fused feature pyramid, one small subpackage each (as segmentation_models_pytorch):
linear for classification, UPerNet for segmentation (SatDiFuser Sec. 4.1), a light per-pixel head for
few-shot work. ``create_head(name, in_chs, num_classes, **kwargs)`` builds one by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ConvNormAct, Head
from .linear import LinearHead
from .pixel import PixelHead
from .upernet import UPerNetHead

HEADS: dict[str, type[Head]] = {LinearHead.name: LinearHead, UPerNetHead.name: UPerNetHead, PixelHead.name: PixelHead}


def create_head(name: str, in_chs: Sequence[int], num_classes: int, **kwargs: Any) -> Head:
    """A head by name ("linear", "upernet", "pixel") for a pyramid with ``in_chs`` channels per level."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known: {', '.join(HEADS)}") from None
    return cls(in_chs, num_classes, **kwargs)


__all__ = ["HEADS", "ConvNormAct", "Head", "LinearHead", "PixelHead", "UPerNetHead", "create_head"]
