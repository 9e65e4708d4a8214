"""Class polygons of a class raster that arrives in strips of rows, without a full-size array.

Each strip is polygonised with ``rasterio.features.shapes`` (4-connected, as the raster's regions
are). Regions that touch the strip's lower edge may continue in the next strip: they stay open, and
the next strip's regions join them where a pixel of the one's last row and a pixel of the other's first
row lie one above the other with the same class (exactly 4-connectivity across the border). The joins
are found on those two rows of region labels, the groups by connected components
(``scipy.sparse.csgraph``), and a group's geometries are unioned once, when it is final: no polygon is
compared with another, so the time grows with the area (linearly in the number of strips and regions).
Each piece carries its pixel count and the sum of its confidence, so merged polygons get an exact mean
confidence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes

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


@dataclass(eq=False)
class _OpenPiece:
    """A region that may continue below: its geometries from each strip, unioned once it is final."""

    parts: list[shapely.Geometry]
    class_id: int
    pixels: int
    confidence_sum: float

    def final(self) -> ClassPiece:
        geometry = self.parts[0] if len(self.parts) == 1 else shapely.union_all(self.parts)
        return ClassPiece(geometry, self.class_id, self.pixels, self.confidence_sum)


class StripPolygonizer:
    """Feed strips top to bottom with :meth:`add_strip`; each call returns the polygons that became
    final, and :meth:`finish` the rest. ``transform`` and ``height`` are the whole output's."""

    def __init__(self, transform: rasterio.Affine, height: int) -> None:
        self.transform = transform
        self.height = height
        self._open: list[_OpenPiece] = []
        self._bottom: np.ndarray | None = None  # the last row's open piece per column, -1: none

    def add_strip(self, class_ids: np.ndarray, confidence: np.ndarray, row_off: int) -> list[ClassPiece]:
        """Polygonise rows ``[row_off, row_off + h)`` of the output (class_ids uint8, nodata 255)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        strip_h = class_ids.shape[0]
        transform = self.transform @ rasterio.Affine.translation(0, row_off)
        regions, index, counts, sums = _strip_regions(class_ids, confidence, transform)
        above, below = len(self._open), len(regions)
        # Nodes: the open pieces (0..above-1), then this strip's regions; an edge where they touch.
        if above and below and row_off > 0 and self._bottom is not None:
            upper, lower = self._bottom, index[0].astype(np.int64) - 1
            upper_class = np.array([p.class_id for p in self._open])[np.maximum(upper, 0)]
            touching = (upper >= 0) & (lower >= 0) & (upper_class == class_ids[0])
            pairs = np.unique(np.stack([upper[touching], lower[touching] + above], axis=1), axis=0)
        else:
            pairs = np.zeros((0, 2), dtype=np.int64)
        nodes = above + below
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes))
        _, group_of = connected_components(graph, directed=False)
        bottom_open = row_off + strip_h < self.height
        last_row = set(np.unique(index[-1]).tolist()) if bottom_open else set()
        groups: dict[int, _OpenPiece] = {}
        reaches_bottom: set[int] = set()
        for node in range(nodes):
            group = int(group_of[node])
            if node < above:
                source = self._open[node]
                parts, class_id, pixels, confidence_sum = source.parts, source.class_id, source.pixels, \
                    source.confidence_sum
            else:
                i = node - above
                parts, class_id = [regions[i][0]], regions[i][1]
                pixels, confidence_sum = int(counts[i + 1]), float(sums[i + 1])
                if i + 1 in last_row:
                    reaches_bottom.add(group)
            piece = groups.get(group)
            if piece is None:
                groups[group] = _OpenPiece(list(parts), class_id, pixels, confidence_sum)
            else:
                piece.parts.extend(parts)
                piece.pixels += pixels
                piece.confidence_sum += confidence_sum
        finished: list[ClassPiece] = []
        still_open: list[_OpenPiece] = []
        open_index: dict[int, int] = {}
        for group, piece in groups.items():
            if group in reaches_bottom:
                open_index[group] = len(still_open)
                still_open.append(piece)
            else:
                finished.append(piece.final())
        self._open = still_open
        if bottom_open:
            region_open = np.full(below + 1, -1, dtype=np.int64)  # region label -> open piece
            for i in range(below):
                region_open[i + 1] = open_index.get(int(group_of[above + i]), -1)
            self._bottom = region_open[index[-1]]
        else:
            self._bottom = None
        return finished

    def finish(self) -> list[ClassPiece]:
        left, self._open, self._bottom = self._open, [], None
        return [piece.final() for piece in left]


def _strip_regions(class_ids: np.ndarray, confidence: np.ndarray, transform: rasterio.Affine
                   ) -> tuple[list[tuple[shapely.Geometry, int]], np.ndarray, np.ndarray, np.ndarray]:
    """The strip's regions (geometry, class), their label raster (0: none, i + 1: region i), and each
    label's pixel count and confidence sum. The labels come first (4-connected components of each class,
    ``scipy.ndimage.label``), then one outline per label (``shapes`` of the label raster): no polygon is
    rasterised back."""
    from scipy import ndimage

    four = ndimage.generate_binary_structure(2, 1)
    labels = np.zeros(class_ids.shape, dtype=np.int32)
    region_class: list[int] = []
    for value in np.unique(class_ids[class_ids != CLASS_NODATA]).tolist():
        components, count = ndimage.label(class_ids == value, structure=four)
        inside = components > 0
        labels[inside] = components[inside] + len(region_class)
        region_class.extend([int(value)] * count)
    if not region_class:
        empty = np.zeros(1)
        return [], labels, empty, empty
    counts = np.bincount(labels.ravel(), minlength=len(region_class) + 1)
    sums = np.bincount(labels.ravel(), weights=confidence.ravel().astype(np.float64),
                       minlength=len(region_class) + 1)
    outlines: list[shapely.Geometry | None] = [None] * len(region_class)
    # Outlines without holes (most of them) are built in one vectorised call; the others one by one.
    plain: list[int] = []
    plain_points: list[tuple[float, float]] = []
    plain_sizes: list[int] = []
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        rings = geometry["coordinates"]
        if len(rings) == 1:
            plain.append(int(value) - 1)
            plain_points.extend(rings[0])
            plain_sizes.append(len(rings[0]))
        else:
            outlines[int(value) - 1] = shapely.Polygon(rings[0], rings[1:])
    if plain:
        rings = shapely.linearrings(np.asarray(plain_points, dtype=np.float64),
                                    indices=np.repeat(np.arange(len(plain)), plain_sizes))
        for i, polygon in zip(plain, shapely.polygons(rings)):
            outlines[i] = polygon
    return list(zip(outlines, region_class)), labels, counts, sums


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
