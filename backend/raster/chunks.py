"""Output chunks: an area cut into windows of at most ``chunk_px`` square, aligned to its origin.

The segment engine predicts and writes one chunk at a time, so the scores it holds span one chunk's
width, not the area's, and a chunk is the unit a resumed job skips. Tiles come from one grid over
the whole area, so chunking never changes a result.
"""

from __future__ import annotations

from collections.abc import Sequence

from rasterio.windows import Window


def chunk_windows(area: Window, chunk_px: int) -> list[Window]:
    """Windows of ``area`` (raster pixel coordinates) of ``chunk_px`` square, row-major; the last row and
    column of chunks are cut by the area's edges. An area narrower and lower than ``chunk_px`` is one
    chunk."""
    if chunk_px <= 0:
        raise ValueError(f"chunk_px must be positive, got {chunk_px}")
    col0, row0, width, height = int(area.col_off), int(area.row_off), int(area.width), int(area.height)
    return [Window(col0 + col, row0 + row, min(chunk_px, width - col), min(chunk_px, height - row))
            for row in range(0, height, chunk_px) for col in range(0, width, chunk_px)]


def intersects(a: Window, b: Window) -> bool:
    return (a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
            and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height)


def tiles_touching(tiles: Sequence[Window], chunk: Window) -> list[Window]:
    """The tiles (in their order) that overlap ``chunk``."""
    return [tile for tile in tiles if intersects(tile, chunk)]


def strip_windows(width: int, height: int, rows: int, cols: int | None = None) -> list[Window]:
    """Windows of ``rows`` x ``cols`` (all columns when None) over a ``width`` x ``height`` raster, row-major."""
    cols = cols or width
    return [Window(col, row, min(cols, width - col), min(rows, height - row))
            for row in range(0, height, rows) for col in range(0, width, cols)]
