from __future__ import annotations

from .model import LinearHead

__all__ = ["LinearHead"]
