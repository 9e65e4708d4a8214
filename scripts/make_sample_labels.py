"""Write resources/sample/sentinel2_coast_labels.gpkg: labels drawn on the sample scene, from the coordinates below.

    .venv/bin/python scripts/make_sample_labels.py            # what produced the file in resources/sample/

The polygons were drawn by eye on renderings of ``sentinel2_coast.tif`` (true colour and colour infrared
with a 100 m grid), each well inside one land-cover type. The file has the layout the plugin's labels layer
uses (``plugin/labels.py``): a ``labels`` polygon layer (class_id, class_name, colour) and a ``classes``
table without geometry, so that the dock adopts it as it is and ``python -m backend train`` reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import shapely

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "resources" / "sample" / "sentinel2_coast_labels.gpkg"
CRS = "EPSG:32618"  # WGS 84 / UTM zone 18N, the scene's CRS

#: (class_id, class_name, colour): ids start at 0 as the dock gives them.
CLASSES = (
    (0, "water", "#2c7fb8"),
    (1, "salt marsh", "#8c510a"),
    (2, "sand", "#f6e8a0"),
    (3, "fields", "#fdae61"),
    (4, "woodland", "#1a9850"),
)

#: Polygon rings (easting, northing in metres) per class name, each drawn inside one land-cover patch.
POLYGONS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "water": (
        ((448300, 4170500), (449500, 4170500), (449500, 4168100), (448200, 4168100)),  # Atlantic, past the surf
        ((446700, 4173650), (447900, 4173650), (447900, 4173250), (446700, 4173250)),  # the bay, north
        ((447700, 4172150), (448000, 4172150), (448000, 4171800), (447700, 4171800)),  # the inlet behind the spit
        ((446775, 4170362), (447075, 4170337), (447100, 4170200), (446800, 4170250)),  # tidal channel junction
        ((444700, 4168420), (445405, 4168420), (445405, 4167972), (444700, 4167972)),  # shallow bay, south-west
    ),
    "salt marsh": (
        ((445500, 4170850), (445950, 4170850), (445950, 4170475), (445500, 4170475)),
        ((446850, 4171150), (447150, 4171150), (447150, 4170875), (446850, 4170875)),
        ((446375, 4169700), (446950, 4169700), (446950, 4169350), (446375, 4169350)),
        ((448600, 4172950), (448740, 4172980), (448740, 4172560), (448560, 4172520)),  # behind the barrier dunes
        ((447750, 4172600), (447950, 4172600), (447950, 4172350), (447750, 4172350)),  # marsh island in the bay
    ),
    "sand": (
        ((447760, 4170300), (447930, 4170300), (447840, 4169300), (447700, 4169300)),  # barrier beach
        ((447660, 4168900), (447790, 4168900), (447625, 4168300), (447530, 4168300)),  # barrier beach, south
        ((449180, 4173300), (449360, 4173300), (449230, 4172700), (449040, 4172700)),  # beach of the northern island
        ((447880, 4171450), (448000, 4171450), (448000, 4171330), (447880, 4171330)),  # northern tip of the beach
    ),
    "fields": (
        ((445291, 4172543), (445683, 4172375), (445571, 4172067), (445179, 4172179)),
        ((445291, 4173636), (445683, 4173692), (445627, 4173440), (445291, 4173328)),
        ((444394, 4173244), (444730, 4173244), (444730, 4173048), (444394, 4173048)),
        ((443442, 4169878), (443975, 4169934), (443975, 4169710), (443498, 4169570)),
        ((443820, 4173440), (443974, 4173440), (443918, 4172964), (443750, 4172964)),  # a bare (ploughed) field
    ),
    "woodland": (
        ((444170, 4172628), (444450, 4172628), (444450, 4172348), (444170, 4172348)),
        ((445347, 4171871), (445627, 4171843), (445627, 4171647), (445347, 4171647)),
        ((443414, 4170804), (443863, 4170804), (443863, 4170551), (443414, 4170551)),
        ((443358, 4172320), (443582, 4172292), (443582, 4172124), (443358, 4172124)),
    ),
}


def label_rows() -> tuple[list[shapely.MultiPolygon], np.ndarray, np.ndarray, np.ndarray]:
    """The label polygons (as multipolygons, as the plugin saves them) with their class fields, in class order."""
    by_name = {name: (class_id, colour) for class_id, name, colour in CLASSES}
    geometries, ids, names, colours = [], [], [], []
    for name, rings in POLYGONS.items():
        class_id, colour = by_name[name]
        for ring in rings:
            polygon = shapely.Polygon(ring)
            if not polygon.is_valid or polygon.area <= 0:
                raise ValueError(f"a {name} polygon is invalid: {ring}")
            geometries.append(shapely.MultiPolygon([shapely.geometry.polygon.orient(polygon)]))
            ids.append(class_id)
            names.append(name)
            colours.append(colour)
    return (geometries, np.array(ids, dtype=np.int32), np.array(names, dtype=object),
            np.array(colours, dtype=object))


def write_label_layers(path: Path, geometries: list, ids: np.ndarray, names: np.ndarray, colours: np.ndarray,
                       classes: tuple[tuple[int, str, str], ...], crs: str) -> Path:
    """Write a labels GeoPackage afresh, in the plugin's layout: the ``labels`` layer (multipolygons with class_id,
    class_name, colour) first, then the ``classes`` table (class_id, class_name, colour) without geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    partial.unlink(missing_ok=True)
    fields = ["class_id", "class_name", "colour"]
    # A fixed timestamp in the GeoPackage's metadata: the same labels give the same bytes.
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    pyogrio.raw.write(str(partial), shapely.to_wkb(np.asarray(geometries, dtype=object)), [ids, names, colours],
                      fields, driver="GPKG", layer="labels", geometry_type="MultiPolygon", crs=crs)
    pyogrio.raw.write(str(partial), None, [np.array([c[0] for c in classes], dtype=np.int32),
                                           np.array([c[1] for c in classes], dtype=object),
                                           np.array([c[2] for c in classes], dtype=object)],
                      fields, driver="GPKG", layer="classes", geometry_type=None, append=True)
    partial.replace(path)
    return path


def write_labels(path: Path) -> Path:
    """Write the sample's GeoPackage afresh."""
    return write_label_layers(path, *label_rows(), CLASSES, CRS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    path = write_labels(args.out)
    counts = {name: len(rings) for name, rings in POLYGONS.items()}
    print(f"{path}: {sum(counts.values())} labels, " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
