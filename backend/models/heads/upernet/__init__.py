from __future__ import annotations

from .decoder import PyramidPoolingModule, UPerNetDecoder
from .model import UPerNetHead

__all__ = ["PyramidPoolingModule", "UPerNetDecoder", "UPerNetHead"]
