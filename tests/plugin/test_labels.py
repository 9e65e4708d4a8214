"""The labels GeoPackage: classes managed, labels saved as they are drawn, nothing lost on reopening."""

from __future__ import annotations

import pytest
from osgeo import ogr, osr
from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsPointXY, QgsRectangle, QgsVectorLayer
from terrafuse_under_test.plugin.labels import LabelsError, LabelsLayer

from tests.plugin.conftest import show_layer

UTM18 = QgsCoordinateReferenceSystem("EPSG:32618")


def square(x: float, y: float, size: float = 100) -> QgsGeometry:
    return QgsGeometry.fromRect(QgsRectangle(x, y, x + size, y + size))


def reopen(path: str) -> LabelsLayer:
    return LabelsLayer(QgsVectorLayer(f"{path}|layername=labels", "again", "ogr"))


def test_classes_and_labels_are_saved_as_they_are_made(tmp_path) -> None:
    labels = LabelsLayer.create(str(tmp_path / "labels"), UTM18)
    water = labels.add_class("water")
    marsh = labels.add_class("marsh", "#00ff00")
    assert (water.class_id, marsh.class_id) == (0, 1)
    assert water.colour == "#e41a1c"
    labels.add_label(square(444000, 4170000), UTM18, water.class_id)
    labels.add_label(square(445000, 4170000), UTM18, marsh.class_id)
    labels.add_label(square(445500, 4170000), UTM18, marsh.class_id)
    # Nothing was committed by hand: a fresh layer on the same file sees everything.
    again = reopen(labels.path)
    assert [c.name for c in again.classes()] == ["water", "marsh"]
    assert again.counts() == {0: 1, 1: 2}
    names = sorted(f["class_name"] for f in again.layer.getFeatures())
    assert names == ["marsh", "marsh", "water"]


def test_rename_recolour_and_delete_reach_the_labels(tmp_path) -> None:
    labels = LabelsLayer.create(str(tmp_path / "labels.gpkg"), UTM18)
    water = labels.add_class("water")
    marsh = labels.add_class("marsh")
    labels.add_label(square(444000, 4170000), UTM18, water.class_id)
    labels.add_label(square(445000, 4170000), UTM18, marsh.class_id)
    labels.rename_class(marsh.class_id, "salt marsh")
    labels.recolour_class(marsh.class_id, "#123456")
    again = reopen(labels.path)
    feature = next(f for f in again.layer.getFeatures() if f["class_id"] == marsh.class_id)
    assert (feature["class_name"], feature["colour"]) == ("salt marsh", "#123456")
    assert labels.delete_class(water.class_id) == 1
    again = reopen(labels.path)
    assert [c.name for c in again.classes()] == ["salt marsh"]
    assert again.counts() == {marsh.class_id: 1}
    categories = labels.layer.renderer().categories()
    assert [(c.value(), c.label()) for c in categories] == [(marsh.class_id, "salt marsh")]
    assert categories[0].symbol().symbolLayer(0).strokeColor().name() == "#123456"


def test_labels_drawn_in_another_crs_and_points(tmp_path) -> None:
    labels = LabelsLayer.create(str(tmp_path / "labels.gpkg"), UTM18)
    fields = labels.add_class("fields")
    in_degrees = QgsGeometry.fromRect(QgsRectangle(-75.64, 37.67, -75.635, 37.675))
    labels.add_label(in_degrees, QgsCoordinateReferenceSystem("EPSG:4326"), fields.class_id)
    box = next(labels.layer.getFeatures()).geometry().boundingBox()
    assert 443000 < box.xMinimum() < 449000, "stored in the layer's CRS"
    point_label = LabelsLayer.point_square(QgsPointXY(444000, 4170000), 30)
    labels.add_label(point_label, UTM18, fields.class_id)
    assert labels.counts() == {fields.class_id: 2}


def test_mistakes_get_messages(tmp_path) -> None:
    labels = LabelsLayer.create(str(tmp_path / "labels.gpkg"), UTM18)
    labels.add_class("water")
    with pytest.raises(LabelsError, match="There is a class 'water' already"):
        labels.add_class("water")
    with pytest.raises(LabelsError, match="needs a name"):
        labels.add_class("  ")
    with pytest.raises(LabelsError, match="There is no class 7"):
        labels.add_label(square(0, 0), UTM18, 7)
    with pytest.raises(LabelsError, match="exists already"):
        LabelsLayer.create(labels.path, UTM18)
    with pytest.raises(LabelsError, match="not a colour"):
        labels.recolour_class(0, "greenish")


def test_an_existing_geopackage_of_polygons_is_adopted(tmp_path) -> None:
    path = str(tmp_path / "drawn.gpkg")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = source.CreateLayer("drawn", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
    for name in ("water", "beach", "water"):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("class_name", name)
        feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,10 0,10 10,0 0))"))
        layer.CreateFeature(feature)
    source = None
    adopted = LabelsLayer(QgsVectorLayer(path, "drawn", "ogr"))
    assert [(c.class_id, c.name) for c in adopted.classes()] == [(0, "water"), (1, "beach")]
    assert adopted.counts() == {0: 2, 1: 1}


def test_the_dock_draws_labels_for_the_chosen_class(plugin, iface, sample_layer, qtbot, tmp_path) -> None:
    from qgis.PyQt.QtCore import QPoint, Qt

    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    panel = dock.labels_panel
    assert not dock.addClassButton.isEnabled(), "no labels layer yet"
    labels = panel.create_labels(str(tmp_path / "labels.gpkg"))
    assert labels.layer.crs() == sample_layer.crs()
    qtbot.waitUntil(lambda: dock.drawLabelPolygonButton.height() > 0)  # the section opened and laid out
    panel.add_class("water")
    panel.add_class("marsh")
    assert dock.classList.count() == 2
    assert dock.classList.currentItem().text() == "marsh  (0 labels)"
    viewport = iface.canvas.viewport()

    def at(fx: float, fy: float) -> QPoint:
        return QPoint(int(viewport.width() * fx), int(viewport.height() * fy))

    qtbot.mouseClick(dock.drawLabelPolygonButton, Qt.MouseButton.LeftButton)
    for fx, fy in ((0.3, 0.3), (0.4, 0.3), (0.4, 0.4)):
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=at(fx, fy))
    qtbot.mouseClick(viewport, Qt.MouseButton.RightButton, pos=at(0.4, 0.4))
    panel.select_class(0)
    qtbot.mouseClick(dock.drawLabelPointButton, Qt.MouseButton.LeftButton)
    assert not dock.drawLabelPolygonButton.isChecked(), "one drawing tool at a time"
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=at(0.7, 0.7))
    assert [dock.classList.item(i).text() for i in range(2)] == ["water  (1 label)", "marsh  (1 label)"]
    saved = reopen(labels.path)
    assert saved.counts() == {0: 1, 1: 1}
    point_label = next(f for f in saved.layer.getFeatures() if f["class_id"] == 0)
    assert point_label.geometry().boundingBox().width() == pytest.approx(30.0)  # 3 pixels of 10 m


def _drag(qtbot, viewport, start, end) -> None:
    from qgis.PyQt.QtCore import QPoint, Qt

    def at(fx: float, fy: float) -> QPoint:
        return QPoint(int(viewport.width() * fx), int(viewport.height() * fy))

    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=at(*start))
    qtbot.mouseMove(viewport, pos=at((start[0] + end[0]) / 2, (start[1] + end[1]) / 2))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=at(*end))


def test_labels_drawn_one_after_another_and_managed_in_a_list(plugin, iface, sample_layer, qtbot,
                                                              tmp_path) -> None:
    from qgis.PyQt.QtCore import Qt

    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.rasterCombo.setLayer(sample_layer)
    panel = dock.labels_panel
    labels = panel.create_labels(str(tmp_path / "labels.gpkg"))
    qtbot.waitUntil(lambda: dock.drawLabelRectangleButton.height() > 0)
    panel.add_class("water")
    viewport = iface.canvas.viewport()
    qtbot.mouseClick(dock.drawLabelRectangleButton, Qt.MouseButton.LeftButton)
    tool = iface.canvas.mapTool()
    _drag(qtbot, viewport, (0.2, 0.2), (0.3, 0.3))
    _drag(qtbot, viewport, (0.5, 0.5), (0.6, 0.55))  # no click on the button in between
    assert labels.counts() == {0: 2}, "the second rectangle is kept too"
    assert iface.canvas.mapTool() is tool, "the tool stays on"
    assert dock.drawLabelRectangleButton.isChecked()
    qtbot.mouseClick(dock.drawLabelPointButton, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=viewport.rect().center())
    assert not dock.drawLabelRectangleButton.isChecked(), "another tool takes over"
    iface.canvas.setFocus()
    qtbot.keyClick(iface.canvas, Qt.Key.Key_Escape)
    assert not dock.drawLabelPointButton.isChecked(), "Esc hands the canvas back"
    assert iface.canvas.mapTool() is not tool

    label_list = panel.labelList
    assert label_list.topLevelItemCount() == 3
    rows = [[label_list.topLevelItem(r).text(c) for c in range(3)] for r in range(3)]
    assert [row[:2] for row in rows] == [["water", "rectangle"], ["water", "rectangle"], ["water", "point"]]
    assert rows[2][2] == "900 m²", "a point label: 3 x 3 pixels of 10 m"
    assert rows[0][2].endswith(("m²", "ha", "km²"))
    assert panel.labelCountLabel.text() == "3 labels"

    label_list.topLevelItem(1).setSelected(True)  # select: the label lights up on the map
    second = label_list.topLevelItem(1).data(0, Qt.ItemDataRole.UserRole)
    assert labels.layer.selectedFeatureIds() == [second]
    before = iface.canvas.extent()
    qtbot.mouseClick(panel.zoomLabelButton, Qt.MouseButton.LeftButton)
    after = iface.canvas.extent()
    assert after.width() < before.width() / 2
    assert after.contains(labels.layer.getFeature(second).geometry().boundingBox())
    qtbot.mouseClick(panel.deleteLabelButton, Qt.MouseButton.LeftButton)
    assert label_list.topLevelItemCount() == 2
    assert second not in {f.id() for f in reopen(labels.path).layer.getFeatures()}
    qtbot.mouseClick(panel.undoLabelButton, Qt.MouseButton.LeftButton)  # the point, drawn last
    assert [label_list.topLevelItem(r).text(1) for r in range(label_list.topLevelItemCount())] == ["rectangle"]
    assert reopen(labels.path).counts() == {0: 1}


def _polygons_with(path: str, field: str, values) -> None:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = source.CreateLayer("parcels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    for i, value in enumerate(values):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField(field, value)
        x = 444000 + 200 * i
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x} 4170000,{x + 100} 4170000,{x + 100} 4170100,"
                                                      f"{x} 4170100,{x} 4170000))"))
        layer.CreateFeature(feature)
    source = None


def test_a_layer_without_class_name_is_copied_never_edited(plugin, qtbot, tmp_path) -> None:
    import hashlib
    from pathlib import Path

    from qgis.core import QgsProject

    dock = plugin.dock
    path = str(tmp_path / "parcels.gpkg")
    _polygons_with(path, "landuse", ["wheat", "forest", "wheat", None])
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    parcels = QgsVectorLayer(path, "parcels", "ogr")
    QgsProject.instance().addMapLayer(parcels)
    panel = dock.labels_panel
    asked = []
    panel.ask_class_field = lambda layer, fields: asked.append(fields) or None  # the user cancels
    dock.labelsLayerCombo.setLayer(parcels)
    assert asked == [["landuse"]]
    assert panel.labels is None
    assert dock.labelsLayerCombo.currentLayer() is None
    assert "left as it is" in dock.statusLabel.text()

    panel.ask_class_field = lambda layer, fields: "landuse"  # the user picks the field
    dock.labelsLayerCombo.setLayer(parcels)
    labels = panel.labels
    assert labels is not None
    assert labels.path == str(tmp_path / "parcels-labels.gpkg")
    assert [c.name for c in labels.classes()] == ["wheat", "forest"]
    assert labels.counts() == {0: 2, 1: 1}, "the polygon without a class is left out"
    assert len(labels.layer.renderer().categories()) == 2, "the polygons stay on the map, by class"
    assert dock.classList.count() == 2
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, "the user's file is untouched"
    assert parcels.fields().names() == ["fid", "landuse"]
    assert "the original is unchanged" in dock.statusLabel.text()
