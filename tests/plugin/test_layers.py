"""Outputs arrive as styled layers in one group, with their provenance in the metadata."""

from __future__ import annotations

import json

import numpy
from osgeo import gdal, ogr, osr
from qgis.core import QgsProject
from terrafuse_under_test.plugin.layers import PROVENANCE_PROPERTY, add_result_layers, group_title

PALETTE_QML = """<!DOCTYPE qgis><qgis version="3.22.0" styleCategories="Symbology"><pipe>
<rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1"><colorPalette>
<paletteEntry value="0" color="#1f77b4" label="water" alpha="255"/>
<paletteEntry value="1" color="#2ca02c" label="marsh" alpha="255"/>
</colorPalette></rasterrenderer></pipe></qgis>"""


def write_outputs(folder):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    raster = gdal.GetDriverByName("GTiff").Create(str(folder / "classes.tif"), 8, 8, 1, gdal.GDT_Byte)
    raster.SetGeoTransform((443330, 10, 0, 4173860, 0, -10))
    raster.SetProjection(srs.ExportToWkt())
    raster.GetRasterBand(1).WriteArray(numpy.eye(8, dtype="uint8"))
    raster = None
    (folder / "classes.qml").write_text(PALETTE_QML)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(folder / "classes.gpkg"))
    layer = source.CreateLayer("classes", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("class_name", "marsh")
    triangle = "POLYGON((443330 4173860,443410 4173860,443410 4173780,443330 4173860))"
    feature.SetGeometry(ogr.CreateGeometryFromWkt(triangle))
    layer.CreateFeature(feature)
    source = None


def test_outputs_come_in_one_group_with_styles_and_provenance(iface, tmp_path) -> None:
    write_outputs(tmp_path)
    provenance = {"model": "/heads/coast", "checkpoint_sha256": "ab" * 32, "parameters": {"overlap_px": 64},
                  "versions": {"torch": "2.14.1"}}
    result = {"provenance": provenance, "layers": [
        {"path": str(tmp_path / "classes.gpkg"), "kind": "vector", "name": "Class polygons", "visible": False},
        {"path": str(tmp_path / "classes.tif"), "kind": "raster", "name": "Classes",
         "qml": str(tmp_path / "classes.qml")},
    ]}
    group = add_result_layers(result, "Segment")
    assert group.name().startswith("Segment · coast · ")
    names = [node.name() for node in group.children()]
    assert names == ["Class polygons", "Classes"]
    assert not group.children()[0].itemVisibilityChecked()
    raster = QgsProject.instance().mapLayersByName("Classes")[0]
    assert raster.renderer().type() == "paletted"
    assert [c.label for c in raster.renderer().classes()] == ["water", "marsh"]
    stored = json.loads(raster.metadata().abstract())
    assert stored["checkpoint_sha256"] == "ab" * 32
    assert json.loads(raster.customProperty(PROVENANCE_PROPERTY))["parameters"] == {"overlap_px": 64}
    assert "checkpoint_sha256=" + "ab" * 32 in raster.metadata().keywords()["terrafuse"]


def test_group_titles_name_task_model_and_time() -> None:
    title = group_title("Segment", "coast", 0)
    assert title.startswith("Segment · coast · ")
    assert len(title) == len("Segment · coast · 00:00:00"), "short: the time of day, to the second"
    assert group_title("Segment", "coast", 1) != title, "two runs a second apart stand apart"
