"""Reading a labels GeoPackage as the dock writes it: a ``labels`` layer beside a ``classes`` table."""

from __future__ import annotations

import warnings

from backend.raster.labels import read_labels
from tests.conftest import ROOT

SAMPLE_LABELS = ROOT / "resources" / "sample" / "sentinel2_coast_labels.gpkg"


def test_the_labels_layer_is_read_beside_the_classes_table() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyogrio warns when it has to guess the layer
        labels = read_labels(str(SAMPLE_LABELS))
    assert sorted(c.name for c in labels.classes) == ["fields", "salt marsh", "sand", "water", "woodland"]
    assert len(labels.geometries) == 23
