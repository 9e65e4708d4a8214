"""What a raster holds: opening one with a message a user understands, and the statistics of a band
(what the ``inspect`` job, :mod:`backend.jobs.inspect`, reports over an area)."""

from __future__ import annotations

from typing import Any

import numpy as np
import rasterio

from ..errors import UserError

PERCENTILES = (2, 25, 50, 75, 98)


def open_raster(path: str) -> rasterio.io.DatasetReader:
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise UserError(f"Cannot open the raster '{path}': {exc}") from None


def band_statistics(values: np.ndarray) -> dict[str, Any]:
    """Statistics of the valid values of one band (a 1-D array)."""
    if values.size == 0:
        return {"valid_px": 0}
    values = values.astype(np.float64, copy=False)
    stats: dict[str, Any] = {
        "valid_px": int(values.size),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        stats[f"p{q}"] = float(v)
    return stats
