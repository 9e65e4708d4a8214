"""Blended class scores of overlapping tiles, kept only for the rows that tiles still touch.

Tiles arrive in row-major order, so once the next tile starts at row r no later tile can touch a row
above r: those rows are final and leave the accumulator. Its height stays near one tile (plus one
block of the output), whatever the area's height, which is what keeps a segmentation's memory bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window


@dataclass(frozen=True)
class ScoreStrip:
    """Finished rows ``[row_off, row_off + height)`` (raster rows) of the area: weighted score sums
    (classes, H, W), weight sums (H, W) and pixels that were nodata in some tile (H, W)."""

    row_off: int
    scores: np.ndarray
    weights: np.ndarray
    invalid: np.ndarray

    @property
    def height(self) -> int:
        return int(self.weights.shape[0])

    def probabilities(self) -> np.ndarray:
        """The blend: sum(w * p) / sum(w), float32 (classes, H, W); 0 where no tile contributed."""
        return self.scores / np.maximum(self.weights, np.float32(1e-12))[None]


class StripAccumulator:
    """Score and weight sums (float32) over all columns of ``area`` (an output chunk: its width bounds
    the memory) for the rows from :attr:`row_off` down to the lowest row a tile has touched so far."""

    def __init__(self, classes: int, area: Window) -> None:
        self.classes = classes
        self.area = area
        self._col0, self._width = int(area.col_off), int(area.width)
        self._row_end_area = int(area.row_off + area.height)
        self.row_off = int(area.row_off)
        self._scores = np.zeros((classes, 0, self._width), dtype=np.float32)
        self._weights = np.zeros((0, self._width), dtype=np.float32)
        self._invalid = np.zeros((0, self._width), dtype=bool)

    @property
    def rows_held(self) -> int:
        return int(self._weights.shape[0])

    def _grow_to(self, row_end: int) -> None:
        extra = row_end - (self.row_off + self.rows_held)
        if extra <= 0:
            return
        self._scores = np.concatenate(
            [self._scores, np.zeros((self.classes, extra, self._width), dtype=np.float32)], axis=1)
        self._weights = np.concatenate([self._weights, np.zeros((extra, self._width), dtype=np.float32)])
        self._invalid = np.concatenate([self._invalid, np.zeros((extra, self._width), dtype=bool)])

    def add(self, tile: Window, probabilities: np.ndarray, valid: np.ndarray, weights: np.ndarray) -> None:
        """Add a tile's class probabilities (classes, h, w), weighted, where the tile overlaps the area."""
        tile_row0, tile_col0 = int(tile.row_off), int(tile.col_off)
        row0 = max(tile_row0, int(self.area.row_off))
        row1 = min(tile_row0 + int(tile.height), self._row_end_area)
        col0 = max(tile_col0, self._col0)
        col1 = min(tile_col0 + int(tile.width), self._col0 + self._width)
        if row1 <= row0 or col1 <= col0:
            return
        if row0 < self.row_off:
            raise ValueError(f"tile at row {tile_row0} touches rows already written (from {self.row_off} on)")
        self._grow_to(row1)
        t_rows, t_cols = slice(row0 - tile_row0, row1 - tile_row0), slice(col0 - tile_col0, col1 - tile_col0)
        a_rows, a_cols = slice(row0 - self.row_off, row1 - self.row_off), slice(col0 - self._col0, col1 - self._col0)
        w = weights[t_rows, t_cols]
        self._scores[:, a_rows, a_cols] += probabilities[:, t_rows, t_cols] * w
        self._weights[a_rows, a_cols] += w
        self._invalid[a_rows, a_cols] |= ~valid[t_rows, t_cols]

    def state(self) -> dict[str, np.ndarray]:
        """The sums held (rows from :attr:`row_off`), exactly, for a checkpoint (:meth:`restore`)."""
        return {"row_off": np.array(self.row_off, dtype=np.int64), "scores": self._scores, "weights": self._weights,
                "invalid": self._invalid}

    @classmethod
    def restore(cls, classes: int, area: Window, state: dict[str, np.ndarray]) -> StripAccumulator:
        """The accumulator :meth:`state` described: adding the remaining tiles to it gives the sums, bit for
        bit, of one that saw every tile."""
        accumulator = cls(classes, area)
        accumulator.row_off = int(state["row_off"])
        accumulator._scores = np.array(state["scores"], dtype=np.float32)
        accumulator._weights = np.array(state["weights"], dtype=np.float32)
        accumulator._invalid = np.array(state["invalid"], dtype=bool)
        if accumulator._scores.shape[:1] != (classes,) or accumulator._weights.shape[1:] != (accumulator._width,):
            raise ValueError("the checkpoint is of another area or class count")
        return accumulator

    def pop(self, row_end: int) -> ScoreStrip | None:
        """Remove and return the rows above ``row_end`` (raster row), or None when there are none."""
        row_end = min(row_end, self._row_end_area)
        count = row_end - self.row_off
        if count <= 0:
            return None
        self._grow_to(row_end)  # rows no tile touched are returned with zero weight (nodata)
        strip = ScoreStrip(self.row_off, self._scores[:, :count].copy(), self._weights[:count].copy(),
                           self._invalid[:count].copy())
        self._scores = self._scores[:, count:].copy()
        self._weights = self._weights[count:].copy()
        self._invalid = self._invalid[count:].copy()
        self.row_off = row_end
        return strip


def finished_row(next_tile_row: int | None, area: Window, block_px: int) -> int:
    """The raster row above which every pixel is final once the tiles before ``next_tile_row`` are in
    (the area's end when no tile follows), rounded down to a multiple of ``block_px`` rows of the output
    so that each output block is written once, whole."""
    area_row0, area_end = int(area.row_off), int(area.row_off + area.height)
    if next_tile_row is None:
        return area_end
    done = max(0, min(next_tile_row, area_end) - area_row0)
    return area_row0 + (done // block_px) * block_px
