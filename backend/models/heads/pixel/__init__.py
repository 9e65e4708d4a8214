from __future__ import annotations

from .model import PixelHead

__all__ = ["PixelHead"]
