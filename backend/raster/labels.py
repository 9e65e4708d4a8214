"""Drawn labels: features of a vector layer with a class per feature, placed on a raster's grid.

A labels layer (a GeoPackage as the plugin saves it) has a ``class_name`` field and optionally
``class_id`` (the value the class gets in output rasters) and ``colour`` (``#rrggbb``). Polygons, points
and lines all label the pixels they cover; each feature is one unit of the spatial hold-out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds

from ..errors import UserError

CLASS_NAME_FIELD = "class_name"
CLASS_ID_FIELD = "class_id"
COLOUR_FIELDS = ("colour", "color")
#: The layer the dock writes labels to (its GeoPackage also holds a `classes` table).
LABELS_LAYER = "labels"
#: Class ids share the uint8 class raster with its nodata value, 255.
MAX_CLASS_ID = 254
#: Colours of classes whose layer gives none (ColorBrewer Paired, then Set1).
DEFAULT_COLOURS = ("#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3", "#b2df8a",
                   "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3")
#: Marks a pixel without a label in a rasterised label array.
NO_LABEL = -1


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    colour: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "colour": self.colour}


@dataclass(frozen=True)
class LabelSet:
    """Features (GeoJSON-like, in ``crs``) with the index of their class in ``classes``.

    ``ids`` names each feature as the labels layer does (its feature id, fid), and follows the feature
    through :meth:`to_crs` and :meth:`subset`: it is how a spatial split computed on the whole layer is
    found again on the labels that lie on one raster, and what a result lists as held out.
    """

    geometries: tuple[dict[str, Any], ...]
    class_index: np.ndarray  # (features,) int
    classes: tuple[LabelClass, ...]
    crs: CRS | None
    ids: np.ndarray | None = None  # (features,) int; None: 0, 1, ... in order

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", np.arange(len(self.geometries), dtype=np.int64))

    def to_crs(self, crs: CRS) -> LabelSet:
        if self.crs is None or self.crs == crs:
            return LabelSet(self.geometries, self.class_index, self.classes, crs, self.ids)
        return LabelSet(tuple(transform_geom(self.crs, crs, g) for g in self.geometries), self.class_index,
                        self.classes, crs, self.ids)

    def subset(self, keep: np.ndarray) -> LabelSet:
        kept = np.flatnonzero(keep)
        return LabelSet(tuple(self.geometries[i] for i in kept), self.class_index[kept], self.classes, self.crs,
                        self.ids[kept])

    def features_per_class(self) -> np.ndarray:
        return np.bincount(self.class_index, minlength=len(self.classes))


def _colour(value: Any) -> str | None:
    text = str(value or "").strip()
    if len(text) == 7 and text.startswith("#"):
        try:
            int(text[1:], 16)
        except ValueError:
            return None
        return text.lower()
    return None


def _labels_layer(path: str) -> str | int:
    """The layer of ``path`` that holds the labels: the one named ``labels`` (the dock's GeoPackage also
    holds a ``classes`` table), else the first with geometries, else the first."""
    layers = pyogrio.list_layers(path)
    names = [str(name) for name, _ in layers]
    if LABELS_LAYER in names:
        return LABELS_LAYER
    with_geometry = [str(name) for name, geometry in layers if geometry]
    return with_geometry[0] if with_geometry else 0


def read_labels(path: str) -> LabelSet:
    """Read a labels layer; classes come out sorted by id (given ids) or by name (ids 1, 2, ... assigned)."""
    try:
        layer = _labels_layer(path)
        info = pyogrio.read_info(path, layer=layer)
        wanted = [f for f in info["fields"] if f in (CLASS_NAME_FIELD, CLASS_ID_FIELD, *COLOUR_FIELDS)]
        meta, fids, wkb, field_data = pyogrio.raw.read(path, layer=layer, columns=wanted, read_geometry=True,
                                                       return_fids=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise UserError(f"Cannot read the labels file '{path}': {exc}") from None
    fields = dict(zip(meta["fields"], field_data))
    if CLASS_NAME_FIELD not in fields:
        raise UserError(f"The labels layer '{path}' has no '{CLASS_NAME_FIELD}' field; it has: "
                        f"{', '.join(info['fields']) or 'no fields'}")
    geometries = shapely.from_wkb(wkb)
    names = [str(n).strip() if n is not None else "" for n in fields[CLASS_NAME_FIELD]]
    ids = fields.get(CLASS_ID_FIELD)
    colour_values = next((fields[f] for f in COLOUR_FIELDS if f in fields), None)
    keep = [i for i, (g, n) in enumerate(zip(geometries, names)) if g is not None and not g.is_empty and n]
    if not keep:
        raise UserError(f"The labels layer '{path}' holds no labelled feature (a geometry with a class name)")
    given_id: dict[str, int] = {}
    colour: dict[str, str] = {}
    for i in keep:
        name = names[i]
        if ids is not None and ids[i] is not None and not (isinstance(ids[i], float) and math.isnan(ids[i])):
            value = int(ids[i])
            if given_id.setdefault(name, value) != value:
                raise UserError(f"The class '{name}' has two ids in '{path}': {given_id[name]} and {value}")
        if colour_values is not None and name not in colour and _colour(colour_values[i]):
            colour[name] = _colour(colour_values[i])
    classes = _classes(sorted({names[i] for i in keep}), given_id, colour)
    index_of = {c.name: k for k, c in enumerate(classes)}
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    return LabelSet(
        geometries=tuple(shapely.geometry.mapping(shapely.make_valid(geometries[i])) for i in keep),
        class_index=np.array([index_of[names[i]] for i in keep], dtype=np.int64),
        classes=tuple(classes), crs=crs, ids=np.asarray(fids, dtype=np.int64)[keep],
    )


def _classes(names: list[str], given_id: dict[str, int], colour: dict[str, str]) -> list[LabelClass]:
    if given_id:
        missing = [n for n in names if n not in given_id]
        if missing:
            raise UserError(f"Some classes have a {CLASS_ID_FIELD} and others not ({', '.join(missing)}); "
                            "give every class an id or none")
        by_id: dict[int, str] = {}
        for name, value in given_id.items():
            if not 0 <= value <= MAX_CLASS_ID:
                raise UserError(f"The class '{name}' has the id {value}; ids must lie in 0..{MAX_CLASS_ID}")
            if by_id.setdefault(value, name) != name:
                raise UserError(f"The classes '{by_id[value]}' and '{name}' share the id {value}")
        ordered = sorted(names, key=lambda n: given_id[n])
        ids = [given_id[n] for n in ordered]
    else:
        if len(names) > MAX_CLASS_ID:
            raise UserError(f"{len(names)} classes are more than the {MAX_CLASS_ID} a class raster can hold")
        ordered, ids = names, list(range(1, len(names) + 1))
    return [LabelClass(i, n, colour.get(n, DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)]))
            for k, (i, n) in enumerate(zip(ids, ordered))]


def labels_on_raster(labels: LabelSet, src: rasterio.io.DatasetReader) -> tuple[LabelSet, Window, int]:
    """The labels in the raster's CRS that touch it, the window that covers them and how many were left
    out. Labels that all miss the raster are a user error."""
    if src.crs is None:
        raise UserError("The raster has no CRS, so labels cannot be placed on it; assign a CRS first")
    if labels.crs is None:
        raise UserError("The labels layer has no CRS; save it with one (any CRS works, it is reprojected)")
    local = labels.to_crs(src.crs)
    raster_box = shapely.box(*src.bounds)
    shapes = [shapely.geometry.shape(g) for g in local.geometries]
    touches = np.array([s.intersects(raster_box) for s in shapes], dtype=bool)
    if not touches.any():
        union = shapely.union_all(shapes).bounds
        raise UserError(f"The labels lie outside the raster: labels bounds {_fmt(union)}, raster bounds "
                        f"{_fmt(tuple(src.bounds))} (in {src.crs.to_string()})")
    inside = local.subset(touches)
    left, bottom, right, top = shapely.union_all([s for s, t in zip(shapes, touches) if t]).intersection(
        raster_box).bounds
    exact = from_bounds(left, bottom, right, top, transform=src.transform)
    col_off = min(max(0, math.floor(exact.col_off)), src.width - 1)
    row_off = min(max(0, math.floor(exact.row_off)), src.height - 1)
    # At least one pixel wide and high: a point label has empty bounds.
    col_end = min(src.width, max(col_off + 1, math.ceil(exact.col_off + exact.width)))
    row_end = min(src.height, max(row_off + 1, math.ceil(exact.row_off + exact.height)))
    return inside, Window(col_off, row_off, col_end - col_off, row_end - row_off), int((~touches).sum())


def rasterize_features(labels: LabelSet, window: Window, transform: rasterio.Affine) -> np.ndarray:
    """For each pixel of ``window`` (in the raster ``transform``), the index of the label feature that
    covers it, or :data:`NO_LABEL`. Where features overlap, the later one wins."""
    height, width = int(window.height), int(window.width)
    if not labels.geometries:
        return np.full((height, width), NO_LABEL, dtype=np.int32)
    window_transform = rasterio.windows.transform(window, transform)
    return rasterize(((g, i) for i, g in enumerate(labels.geometries)), out_shape=(height, width),
                     transform=window_transform, fill=NO_LABEL, dtype=np.int32)


def _fmt(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"
