"""Class polygons of a class raster that arrives in strips of rows, without a full-size array.

Each strip is polygonised with ``rasterio.features.shapes`` (4-connected, as the raster's regions
are); pieces that touch the strip's lower edge may continue in the next strip, so they stay open
and are merged (a shapely union per class) with the next strip's pieces that touch its upper edge.
A piece is final, and leaves memory, once nothing below can extend it. Each piece carries its pixel
count and the sum of its confidence, so merged polygons get an exact mean confidence.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes

from .writers import CLASS_NODATA, area_m2


@dataclass(eq=False)
class ClassPiece:
    """A connected region of one class (in the raster's CRS) with its pixel count and confidence sum."""

    geometry: shapely.Geometry
    class_id: int
    pixels: int
    confidence_sum: float
    touches_top: bool = False
    touches_bottom: bool = False

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.pixels if self.pixels else float("nan")


class StripPolygonizer:
    """Feed strips top to bottom with :meth:`add_strip`; each call returns the polygons that became
    final, and :meth:`finish` the rest. ``transform`` and ``height`` are the whole output's."""

    def __init__(self, transform: rasterio.Affine, height: int) -> None:
        self.transform = transform
        self.height = height
        self._open: list[ClassPiece] = []

    def add_strip(self, class_ids: np.ndarray, confidence: np.ndarray, row_off: int) -> list[ClassPiece]:
        """Polygonise rows ``[row_off, row_off + h)`` of the output (class_ids uint8, nodata 255)."""
        strip_h = class_ids.shape[0]
        transform = self.transform @ rasterio.Affine.translation(0, row_off)
        pieces = _strip_pieces(class_ids, confidence, transform)
        top_open, bottom_open = row_off > 0, row_off + strip_h < self.height
        if not bottom_open:
            for piece in pieces:
                piece.touches_bottom = False
        touching = [p for p in pieces if top_open and p.touches_top]
        untouched = [p for p in pieces if not (top_open and p.touches_top)]
        merged = _merge(self._open, touching)
        finished = [p for p in merged + untouched if not p.touches_bottom]
        self._open = [p for p in merged + untouched if p.touches_bottom]
        return finished

    def finish(self) -> list[ClassPiece]:
        left, self._open = self._open, []
        return left


def _strip_pieces(class_ids: np.ndarray, confidence: np.ndarray, transform: rasterio.Affine) -> list[ClassPiece]:
    """The strip's regions as pieces, each knowing whether it touches the strip's first and last row."""
    found = [(shapely.geometry.shape(geometry), int(value)) for geometry, value in
             shapes(class_ids, mask=class_ids != CLASS_NODATA, connectivity=4, transform=transform)]
    if not found:
        return []
    # Each region's pixels: the region polygons rasterised back (pixel-aligned, so exact).
    index = rasterize(((g, i + 1) for i, (g, _) in enumerate(found)), out_shape=class_ids.shape,
                      transform=transform, fill=0, dtype="int32")
    counts = np.bincount(index.ravel(), minlength=len(found) + 1)
    sums = np.bincount(index.ravel(), weights=confidence.ravel().astype(np.float64), minlength=len(found) + 1)
    top = set(np.unique(index[0]).tolist())
    bottom = set(np.unique(index[-1]).tolist())
    return [ClassPiece(geometry, class_id, int(counts[i]), float(sums[i]), touches_top=i in top,
                       touches_bottom=i in bottom) for i, (geometry, class_id) in enumerate(found, start=1)]


def _merge(above: Sequence[ClassPiece], below: Sequence[ClassPiece]) -> list[ClassPiece]:
    """Union, per class, the open pieces from above with the pieces touching them from below; sources
    are attributed to merged parts by a point inside each source."""
    by_class: dict[int, list[ClassPiece]] = defaultdict(list)
    for piece in [*above, *below]:
        by_class[piece.class_id].append(piece)
    merged: list[ClassPiece] = []
    for class_id, sources in by_class.items():
        if len(sources) == 1:
            merged.append(sources[0])
            continue
        parts = list(shapely.get_parts(shapely.union_all([s.geometry for s in sources])))
        points = [shapely.point_on_surface(s.geometry) for s in sources]
        for part in parts:
            members = [s for s, point in zip(sources, points) if part.contains(point)]
            merged.append(ClassPiece(part, class_id, sum(s.pixels for s in members),
                                     sum(s.confidence_sum for s in members),
                                     touches_bottom=any(s.touches_bottom for s in members)))
    return merged


class PolygonLayerWriter:
    """A GeoPackage layer ``classes`` (class_id, class_name, area_m2, mean_confidence) written in
    batches as polygons become final. Areas are computed on the exact pixel outlines; the stored
    geometry is simplified by ``simplify_px`` pixels (topology preserved per polygon)."""

    FIELDS = ("class_id", "class_name", "area_m2", "mean_confidence")

    def __init__(self, path: Path, crs: CRS | None, transform: rasterio.Affine, classes: Sequence[dict[str, Any]],
                 provenance: dict[str, Any], simplify_px: float = 0.5, batch: int = 5000) -> None:
        self.path, self.crs, self.transform = path, crs, transform
        self.names = {int(c["id"]): str(c["name"]) for c in classes}
        self.provenance = provenance
        self.tolerance = simplify_px * min(abs(transform.a), abs(transform.e))
        self.batch = batch
        self.count = 0
        self._pending: list[ClassPiece] = []
        self._created = False

    def add(self, pieces: Sequence[ClassPiece]) -> None:
        self._pending.extend(pieces)
        if len(self._pending) >= self.batch:
            self._flush()

    def close(self) -> None:
        """Write what is pending; an area without any class still gets its (empty) layer."""
        if self._pending or not self._created:
            self._flush()

    def _flush(self) -> None:
        pieces, self._pending = self._pending, []
        exact = [p.geometry for p in pieces]
        simplified = shapely.simplify(np.asarray(exact, dtype=object), self.tolerance, preserve_topology=True) \
            if exact else np.zeros(0, dtype=object)
        fields = [np.array([p.class_id for p in pieces], dtype=np.int32),
                  np.array([self.names.get(p.class_id, "") for p in pieces], dtype=object),
                  area_m2(exact, self.crs, self.transform),
                  np.array([p.mean_confidence for p in pieces], dtype=np.float64)]
        options: dict[str, Any] = {"append": True} if self._created else {
            "layer_metadata": {"TERRAFUSE_PROVENANCE": json.dumps(self.provenance, default=str)}}
        pyogrio.raw.write(str(self.path), np.array(shapely.to_wkb(simplified), dtype=object) if exact
                          else np.array([], dtype=object), field_data=fields, fields=list(self.FIELDS),
                          layer="classes", driver="GPKG", geometry_type="Polygon",
                          crs=self.crs.to_wkt() if self.crs else None, **options)
        self._created = True
        self.count += len(pieces)
