"""A web layer (XYZ tiles from a stand-in server on 127.0.0.1) exported over an area at a chosen resolution."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QBuffer, QIODevice
from qgis.PyQt.QtGui import QColor, QImage
from terrafuse_under_test.plugin.area import AreaSelection
from terrafuse_under_test.plugin.export import ExportError, export_raster, is_file_raster, utm_crs

from tests.conftest import SAMPLE_SCENE


def tile_png() -> bytes:
    image = QImage(256, 256, QImage.Format.Format_RGB32)
    image.fill(QColor(40, 160, 60))
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data())


@pytest.fixture
def tile_server():
    png = tile_png()
    requests: list[str] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()


def test_an_xyz_layer_is_exported_in_metres(tile_server, tmp_path) -> None:
    url, requests = tile_server
    layer = QgsRasterLayer(f"type=xyz&url={url}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=18&zmin=0", "tiles", "wms")
    assert layer.isValid()
    assert not is_file_raster(layer)
    # A 1 km square near Chincoteague (UTM zone 18N), drawn in degrees.
    area = AreaSelection(QgsGeometry.fromRect(QgsRectangle(-75.64, 37.67, -75.6287, 37.679)),
                         QgsCoordinateReferenceSystem("EPSG:4326"), "test")
    path = export_raster(layer, area, gsd_m=5.0, folder=str(tmp_path))
    assert requests, "the tiles were fetched from the stand-in server"
    dataset = gdal.Open(path)
    assert "UTM zone 18N" in dataset.GetProjection()
    assert dataset.GetGeoTransform()[1] == pytest.approx(5.0)
    assert 190 <= dataset.RasterXSize <= 215
    green = dataset.GetRasterBand(2).ReadAsArray()
    assert green.mean() == pytest.approx(160, abs=3)
    dataset = None


def test_utm_zones() -> None:
    assert utm_crs(-75.6, 37.7).authid() == "EPSG:32618"
    assert utm_crs(151.2, -33.9).authid() == "EPSG:32756"
    assert is_file_raster(QgsRasterLayer(str(SAMPLE_SCENE), "scene"))


def test_too_fine_a_resolution_is_refused(tile_server) -> None:
    url, _ = tile_server
    layer = QgsRasterLayer(f"type=xyz&url={url}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=18&zmin=0", "tiles", "wms")
    area = AreaSelection(QgsGeometry.fromRect(QgsRectangle(-76, 37, -75, 38)),
                         QgsCoordinateReferenceSystem("EPSG:4326"), "test")
    with pytest.raises(ExportError, match="choose a coarser resolution"):
        export_raster(layer, area, gsd_m=1.0)


def test_the_dock_exports_a_web_layer_before_the_job(plugin, tile_server, qtbot) -> None:
    from qgis.core import QgsProject
    from qgis.PyQt.QtCore import Qt

    url, requests = tile_server
    layer = QgsRasterLayer(f"type=xyz&url={url}/%7Bz%7D/%7By%7D/%7Bx%7D.png&zmax=18&zmin=0", "web tiles", "wms")
    QgsProject.instance().addMapLayer(layer)
    dock = plugin.dock
    dock.rasterCombo.setLayer(layer)
    dock.set_task("inspect")
    assert dock.gsdSpin.isVisibleTo(dock)
    dock.gsdSpin.setValue(10.0)
    fields = QgsVectorLayer("Polygon?crs=EPSG:4326", "area", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(-75.64, 37.67, -75.6287, 37.679)))
    fields.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(fields)
    dock.set_area_mode("layer")
    dock.areaLayerCombo.setLayer(fields)
    with qtbot.waitSignal(dock.jobDone, timeout=120_000) as done:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    job, outcome = done.args
    assert outcome["status"] == "ok", outcome
    result = outcome["result"]
    assert result["path"].endswith("export.tif")
    assert result["resolution_m"] == [10.0, 10.0]
    assert result["crs"] == "EPSG:32618"
    assert result["count"] == 4  # RGBA as QGIS renders web tiles
    assert requests
