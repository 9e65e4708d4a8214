"""After training: a preview of the area through the ``segment`` job (class raster and uncertainty), and
the region where a new label would help most.

The preview is the segment job itself, run on the new head folder with ``uncertainty=True``, so the map
the analyst previews is the map flow 1 will give. The most uncertain region is the window, of a tile's
size, with the highest mean normalised entropy in the preview's uncertainty raster; without a preview
(or with a segment job that writes no uncertainty), it is the training tile whose predicted class
probabilities have the highest mean entropy.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
import torch
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..progress import Progress

PREVIEW_SUBFOLDER = "preview"
#: The uncertainty raster is read decimated to at most this many pixels a side to find the region.
UNCERTAINTY_READ_PX = 2048
#: A window counts only when at least this share of its pixels has an uncertainty value.
MIN_VALID_SHARE = 0.5


def region(bounds: Sequence[float], crs: CRS | None, source: str, mean_uncertainty: float) -> dict[str, Any]:
    """The result's ``most_uncertain``: bounds in the raster CRS and in EPSG:4326 (what the dock zooms to)."""
    left, bottom, right, top = (float(v) for v in bounds)
    wgs84 = list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top)) if crs is not None else None
    return {"bounds": [left, bottom, right, top], "crs": crs.to_string() if crs is not None else None,
            "bounds_wgs84": wgs84, "mean_uncertainty": float(mean_uncertainty), "source": source}


def most_uncertain_in_raster(path: str | Path, window_px: int) -> dict[str, Any] | None:
    """The ``window_px`` window (on a half-window grid) of highest mean uncertainty in a score raster whose
    nodata marks pixels outside the area; None when no window has enough valid pixels."""
    with rasterio.open(path) as src:
        scale = max(1.0, max(src.height, src.width) / UNCERTAINTY_READ_PX)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read(1, out_shape=shape, masked=True)
        values = np.asarray(data.filled(0), dtype=np.float64)
        valid = ~np.ma.getmaskarray(data) & np.isfinite(values) & (values >= 0)
        values[~valid] = 0.0
        size = max(1, min(round(window_px / scale), *shape))
        step = max(1, size // 2)
        # Integral images: the sum over any window in four look-ups.
        total = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        count = np.pad(valid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        best: tuple[float, int, int] | None = None
        for row in sorted({*range(0, shape[0] - size + 1, step), shape[0] - size}):
            for col in sorted({*range(0, shape[1] - size + 1, step), shape[1] - size}):
                r1, c1 = row + size, col + size
                n = count[r1, c1] - count[row, c1] - count[r1, col] + count[row, col]
                if n < MIN_VALID_SHARE * size * size:
                    continue
                mean = (total[r1, c1] - total[row, c1] - total[r1, col] + total[row, col]) / n
                if best is None or mean > best[0]:
                    best = (mean, row, col)
        if best is None:
            return None
        mean, row, col = best
        full = Window(col * scale, row * scale, size * scale, size * scale)
        bounds = rasterio.windows.bounds(full, src.transform)
        return region(bounds, src.crs, "preview uncertainty", mean)


@torch.no_grad()
def most_uncertain_tile(model: Any, samples: Sequence[Any], transform: rasterio.Affine, crs: CRS | None,
                        device: torch.device) -> dict[str, Any] | None:
    """The training tile whose valid pixels have the highest mean normalised entropy under the head."""
    from ..training.loop import _batch

    model.to(device).eval()
    best: tuple[float, Window] | None = None
    num_classes = len(model.config.classes)
    for i, sample in enumerate(samples):
        hw = (int(sample.window.height), int(sample.window.width))
        probabilities = model.decode(_batch([s.features for s in samples], [i], device), hw).softmax(1)[0]
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(0) / math.log(num_classes)
        values = entropy.cpu().numpy()[sample.valid]
        if values.size and (best is None or values.mean() > best[0]):
            best = (float(values.mean()), sample.window)
    if best is None:
        return None
    return region(rasterio.windows.bounds(best[1], transform), crs, "training tiles", best[0])


def _area_file(folder: Path, window: Window, transform: rasterio.Affine, crs: CRS | None) -> Path:
    """A GeoPackage holding the rectangle of ``window`` (the preview's area when none is given)."""
    path = folder / "preview_area.gpkg"
    box = shapely.box(*rasterio.windows.bounds(window, transform))
    pyogrio.raw.write(str(path), np.array([shapely.to_wkb(box)], dtype=object), field_data=[], fields=[],
                      crs=crs.to_string() if crs is not None else None, geometry_type="Polygon", driver="GPKG")
    return path


def preview_window(area: Window, tile_px: int, raster_hw: tuple[int, int]) -> Window:
    """The labels' window grown by half a tile on each side (the labels' surroundings), inside the raster."""
    margin = tile_px // 2
    height, width = raster_hw
    col0, row0 = max(0, int(area.col_off) - margin), max(0, int(area.row_off) - margin)
    col1 = min(width, int(area.col_off + area.width) + margin)
    row1 = min(height, int(area.row_off + area.height) + margin)
    return Window(col0, row0, col1 - col0, row1 - row0)


def run_preview(params: dict[str, Any], head_folder: Path, area: Window, raster_hw: tuple[int, int],
                crs: CRS | None, transform: rasterio.Affine, tile_px: int, progress: Progress) -> dict[str, Any]:
    """Run the segment job over ``preview_aoi`` (else the labels' surroundings) with the new head; returns
    ``{"preview": <segment result>}`` plus ``most_uncertain`` when the segment job wrote an uncertainty
    raster."""
    from .. import jobs
    from .segment import run_segment

    out = Path(params["preview_out"]) if params["preview_out"] else Path(head_folder) / PREVIEW_SUBFOLDER
    spec = jobs.get("segment")
    names = {p.name for p in spec.params}
    with tempfile.TemporaryDirectory(prefix="terrafuse-preview-") as scratch:
        aoi = params["preview_aoi"] or str(_area_file(Path(scratch), preview_window(area, tile_px, raster_hw),
                                                      transform, crs))
        raw = {"image": params["image"], "model": str(head_folder), "out": str(out), "aoi": aoi,
               "backbone": params["backbone"]}
        raw.update({k: v for k, v in (("uncertainty", True), ("polygons", False), ("bands", params["bands"]),
                                      ("date", params.get("date"))) if k in names})
        result = run_segment(spec.bind(raw), progress)
    answer: dict[str, Any] = {"preview": result}
    uncertainty = result.get("uncertainty_raster")
    if uncertainty and Path(uncertainty).is_file():
        found = most_uncertain_in_raster(uncertainty, tile_px)
        if found is not None:
            answer["most_uncertain"] = found
    return answer
