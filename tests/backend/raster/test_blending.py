"""Strip accumulators: rows leave once no later tile can touch them, with the sums they had."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from backend.raster.blending import StripAccumulator, finished_row
from backend.raster.tiles import blend_weights, tile_windows


def test_finished_rows_are_whole_output_blocks() -> None:
    area = Window(5, 100, 50, 1000)
    assert finished_row(None, area, 256) == 1100  # the last tile: everything is final
    assert finished_row(300, area, 256) == 100 + 0  # 200 rows done: not yet one block
    assert finished_row(400, area, 256) == 100 + 256
    assert finished_row(50, area, 256) == 100  # tiles shifted above the area


def test_streamed_sums_equal_the_sums_over_the_whole_area() -> None:
    area = Window(3, 7, 90, 230)
    tiles = tile_windows(area, 40, 12, (250, 100))
    rng = np.random.default_rng(0)
    accumulator = StripAccumulator(2, area)
    whole = np.zeros((2, 230, 90), dtype=np.float32)
    strips = []
    for i, tile in enumerate(tiles):
        scores = rng.random((2, 40, 40), dtype=np.float32)
        weights = blend_weights((40, 40), 12)
        accumulator.add(tile, scores, np.ones((40, 40), bool), weights)
        r0, c0 = int(tile.row_off) - 7, int(tile.col_off) - 3
        rows = slice(max(r0, 0), min(r0 + 40, 230))
        cols = slice(max(c0, 0), min(c0 + 40, 90))
        whole[:, rows, cols] += (scores * weights)[:, rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
        following = tiles[i + 1] if i + 1 < len(tiles) else None
        strip = accumulator.pop(finished_row(int(following.row_off) if following else None, area, 32))
        if strip is not None:
            strips.append(strip)
            assert accumulator.rows_held <= 40 + 32  # bounded by a tile and a block, not by the area
    assert [s.row_off for s in strips] == sorted(s.row_off for s in strips)
    assert sum(s.height for s in strips) == 230
    np.testing.assert_allclose(np.concatenate([s.scores for s in strips], axis=1), whole, rtol=1e-6)
    with pytest.raises(ValueError, match="already written"):
        accumulator.add(tiles[0], np.zeros((2, 40, 40), np.float32), np.ones((40, 40), bool), weights)
