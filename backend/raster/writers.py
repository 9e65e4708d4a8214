"""Output rasters of a classification, written window by window, and the temporary names they live
under until the job is complete.

Every output of a job is written under a hidden temporary name beside its final one and renamed into
place only once all outputs are complete (:class:`OutputFiles`), so a cancelled or failed job never
leaves a half-written file where a layer is expected. Rasters are tiled (256 x 256), DEFLATE
compressed and BigTIFF where needed, and written by windows: no full-size array is ever held.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS

from .area import pixel_size_m

CLASS_NODATA = 255
#: Nodata of the float outputs (confidence, uncertainty), whose valid values lie in [0, 1].
SCORE_NODATA = -1.0
#: Block size of the output GeoTIFFs; windows are written in whole blocks of rows where possible.
BLOCK_PX = 256
#: Companion files GDAL or SQLite may leave beside a file.
_COMPANIONS = (".aux.xml", "-wal", "-shm", "-journal")


def _remove(path: Path) -> None:
    for leftover in (path, *(Path(f"{path}{suffix}") for suffix in _COMPANIONS)):
        if leftover.exists():
            leftover.unlink()


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` if the block succeeds."""
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _remove(partial)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        _remove(partial)


class OutputFiles:
    """The outputs of one job in ``folder``: :meth:`partial` names a temporary file for each, and
    :meth:`commit` renames them all into place (with their ``.aux.xml``). :meth:`scratch` names
    temporary files that are never committed (removed with the partials). Leaving the ``with`` block
    without a commit (an error, a cancel) removes every temporary file, and the folder if this job
    created it and it is still empty. Only a killed process leaves them, which is what lets a job
    resume: temporary names carry ``tag`` (the process id by default; a resumable job passes its
    fingerprint, so that the next run finds them)."""

    def __init__(self, folder: Path, tag: str | None = None) -> None:
        self.folder = Path(folder)
        self.tag = tag or str(os.getpid())
        self._partials: dict[Path, Path] = {}
        self._scratch: list[Path] = []
        self._created_folder = False

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()

    def _ensure_folder(self) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created_folder = True

    def mark_created_folder(self) -> None:
        """The folder was created by an earlier, interrupted run of this job: remove it when empty."""
        self._created_folder = True

    @property
    def created_folder(self) -> bool:
        return self._created_folder

    def temporary_name(self, name: str) -> Path:
        """Where the temporary file of output ``name`` lives (nothing created or removed)."""
        final = self.folder / name
        return final.with_name(f".{final.stem}.partial-{self.tag}{final.suffix}")

    def partial(self, name: str, keep: bool = False) -> Path:
        """The temporary path of the output ``name`` (created parent folder; what is left from before is
        removed unless ``keep``, for a resumed job)."""
        self._ensure_folder()
        partial = self.temporary_name(name)
        if not keep:
            _remove(partial)
        self._partials[self.folder / name] = partial
        return partial

    def scratch(self, name: str, keep: bool = False) -> Path:
        """A temporary file that is removed at the end (commit or not); ``name`` is used as given."""
        self._ensure_folder()
        path = self.folder / name
        if not keep:
            _remove(path)
        self._scratch.append(path)
        return path

    def commit(self) -> list[Path]:
        """Rename every temporary file to its final name and remove the scratch files; returns the final
        paths."""
        for final, partial in self._partials.items():
            aux = Path(f"{partial}.aux.xml")
            if aux.exists():
                os.replace(aux, f"{final}.aux.xml")
            elif Path(f"{final}.aux.xml").exists():
                Path(f"{final}.aux.xml").unlink()  # a stale one from an earlier run would describe other data
            os.replace(partial, final)
        finals = list(self._partials)
        self._partials.clear()
        self._remove_scratch()
        return finals

    def _remove_scratch(self) -> None:
        for path in self._scratch:
            _remove(path)
        self._scratch.clear()

    def discard(self) -> None:
        for partial in self._partials.values():
            _remove(partial)
        self._partials.clear()
        self._remove_scratch()
        if self._created_folder and self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _profile(width: int, height: int, transform: rasterio.Affine, crs: CRS | None, dtype: str,
             nodata: float) -> dict[str, Any]:
    return {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": dtype, "crs": crs,
            "transform": transform, "nodata": nodata, "compress": "deflate", "tiled": True,
            "blockxsize": BLOCK_PX, "blockysize": BLOCK_PX, "BIGTIFF": "IF_SAFER",
            # Blocks never written stay empty (read as nodata): a raster filled window by window over
            # several runs (a resumed job) writes each block once, and creating it costs nothing.
            "SPARSE_OK": True}


def hex_rgba(colour: str) -> tuple[int, int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255


def open_class_raster(path: Path, width: int, height: int, transform: rasterio.Affine, crs: CRS | None,
                      classes: Sequence[dict[str, Any]], provenance: dict[str, Any]) -> rasterio.io.DatasetWriter:
    """An empty one-band uint8 GeoTIFF for class ids: nodata 255, a colour table, the class names as
    tags and the provenance as a JSON tag. The caller writes windows and closes it."""
    colormap = {i: (0, 0, 0, 0) for i in range(256)}
    colormap.update({int(c["id"]): hex_rgba(c["colour"]) for c in classes})
    dst = rasterio.open(path, "w", **_profile(width, height, transform, crs, "uint8", CLASS_NODATA))
    dst.write_colormap(1, colormap)
    dst.set_band_description(1, "class")
    dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance, default=str),
                    **{f"CLASS_{int(c['id'])}": c["name"] for c in classes})
    return dst


def open_score_raster(path: Path, width: int, height: int, transform: rasterio.Affine, crs: CRS | None,
                      description: str, provenance: dict[str, Any]) -> rasterio.io.DatasetWriter:
    """An empty one-band float32 GeoTIFF for a per-pixel score in [0, 1], nodata -1."""
    dst = rasterio.open(path, "w", **_profile(width, height, transform, crs, "float32", SCORE_NODATA))
    dst.set_band_description(1, description)
    dst.update_tags(TERRAFUSE_PROVENANCE=json.dumps(provenance, default=str))
    return dst


def write_class_raster(path: Path, class_ids: np.ndarray, transform: rasterio.Affine, crs: CRS | None,
                       classes: Sequence[dict[str, Any]], provenance: dict[str, Any]) -> Path:
    """A class raster from an array already in memory (small outputs), renamed into place when complete."""
    height, width = class_ids.shape
    with replaced_on_success(path) as partial, \
            open_class_raster(partial, width, height, transform, crs, classes, provenance) as dst:
        dst.write(class_ids.astype(np.uint8, copy=False), 1)
    return path


#: GDAL's RAT field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage).
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_PIXEL_COUNT, _GFU_NAME, _GFU_MIN_MAX = 0, 1, 2, 5
_GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 6, 7, 8, 9


def attribute_table_xml(classes: Sequence[dict[str, Any]], pixel_counts: dict[int, int] | None = None) -> str:
    """A GDAL PAM document (what GDAL writes to ``<raster>.aux.xml``) holding a thematic raster
    attribute table for band 1: value, class name, pixel count and colour. rasterio has no RAT API;
    GDAL and QGIS read the table from this file."""
    fields = [("Value", _GFT_INTEGER, _GFU_MIN_MAX), ("class_name", _GFT_STRING, _GFU_NAME),
              ("Count", _GFT_INTEGER, _GFU_PIXEL_COUNT), ("Red", _GFT_INTEGER, _GFU_RED),
              ("Green", _GFT_INTEGER, _GFU_GREEN), ("Blue", _GFT_INTEGER, _GFU_BLUE),
              ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', '    <GDALRasterAttributeTable tableType="thematic">']
    for index, (name, kind, usage) in enumerate(fields):
        lines.append(f'      <FieldDefn index="{index}"><Name>{name}</Name><Type>{kind}</Type>'
                     f"<Usage>{usage}</Usage></FieldDefn>")
    for row, cls in enumerate(sorted(classes, key=lambda c: int(c["id"]))):
        red, green, blue, alpha = hex_rgba(cls["colour"])
        count = (pixel_counts or {}).get(int(cls["id"]), 0)
        values = [int(cls["id"]), html.escape(str(cls["name"]), quote=True), count, red, green, blue, alpha]
        lines.append(f'      <Row index="{row}">' + "".join(f"<F>{v}</F>" for v in values) + "</Row>")
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


def write_attribute_table(raster_path: Path, classes: Sequence[dict[str, Any]],
                          pixel_counts: dict[int, int] | None = None) -> Path:
    """Write the class table as ``<raster_path>.aux.xml`` (after the raster is closed, so GDAL does
    not overwrite it with its own PAM file)."""
    aux = Path(f"{raster_path}.aux.xml")
    aux.write_text(attribute_table_xml(classes, pixel_counts), encoding="utf-8")
    return aux


def area_m2(polygons: Sequence[Any], crs: CRS | None, transform: rasterio.Affine) -> np.ndarray:
    """Polygon areas in square metres (in a geographic CRS, at each polygon's latitude; without a CRS,
    in the raster's own units)."""
    import shapely

    areas = shapely.area(np.asarray(polygons, dtype=object)).astype(np.float64) if len(polygons) else np.zeros(0)
    if crs is None or not len(polygons):
        return areas
    if crs.is_geographic:
        pixel_deg2 = abs(transform.a * transform.e)
        latitudes = shapely.get_y(shapely.centroid(np.asarray(polygons, dtype=object)))
        factors = []
        for latitude in latitudes:
            size = pixel_size_m(crs, transform, float(latitude))
            factors.append(size[0] * size[1] / pixel_deg2 if size else 1.0)
        return areas * np.asarray(factors)
    _, metres_per_unit = crs.linear_units_factor
    return areas * metres_per_unit**2
