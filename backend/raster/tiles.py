"""Tiles of a model's size over an area, overlapping, and the weights that blend their predictions."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window


def _axis_offsets(start: int, length: int, tile_px: int, stride_px: int, limit_px: int) -> list[int]:
    """Tile offsets along one axis covering ``[start, start + length)``, each tile inside ``[0, limit_px)``."""
    if limit_px <= tile_px:
        return [0]
    offsets = []
    end = start + length
    offset = start
    while True:
        clamped = min(max(offset, 0), limit_px - tile_px)
        if not offsets or clamped != offsets[-1]:
            offsets.append(clamped)
        if clamped + tile_px >= end:
            return offsets
        offset += stride_px


def tile_windows(area: Window, tile_px: int, overlap_px: int, raster_hw: tuple[int, int]) -> list[Window]:
    """Windows of ``tile_px`` (or the raster's size, where smaller) covering ``area``, ``overlap_px`` apart
    from their neighbours' edges. Tiles are shifted inwards at the raster's edges rather than padded, so
    the model always sees real pixels and context beyond the area when there is some."""
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap_px must lie in 0..{tile_px - 1}, got {overlap_px}")
    height, width = raster_hw
    stride_px = tile_px - overlap_px
    rows = _axis_offsets(int(area.row_off), int(area.height), tile_px, stride_px, height)
    cols = _axis_offsets(int(area.col_off), int(area.width), tile_px, stride_px, width)
    tile_h, tile_w = min(tile_px, height), min(tile_px, width)
    return [Window(col, row, tile_w, tile_h) for row in rows for col in cols]


def blend_weights(tile_hw: tuple[int, int], overlap_px: int) -> np.ndarray:
    """(H, W) float32 weights that fall linearly towards a tile's edges over ``overlap_px``: blended
    predictions trust tile centres, where the model saw context on every side. Never zero."""
    def ramp(n: int) -> np.ndarray:
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        return np.clip((distance + 1) / (overlap_px + 1), 0, 1) if overlap_px else np.ones(n, np.float32)

    return np.outer(ramp(tile_hw[0]), ramp(tile_hw[1])).astype(np.float32)
