"""Flows 3 and 4 in the dock: the date table of a time series (and the bad input time series bring), a
SkySense head trained from drawn labels, classify with it, a prototype map with region boundaries,
identify clicks and the overlay's opacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, osr
from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QPoint, Qt

from tests.conftest import SAMPLE_SCENE
from tests.plugin.conftest import show_layer

JOB_TIMEOUT_MS = 600_000
UTM18 = QgsCoordinateReferenceSystem("EPSG:32618")
S2_DESCRIPTIONS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
#: 400 m x 400 m of the sample scene's UTM zone.
BOX = (445000.0, 4170000.0, 445400.0, 4170400.0)


def write_raster(path: Path, bands: int, box=BOX, descriptions=S2_DESCRIPTIONS, tags=None, size: int = 40) -> str:
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(path), size, size, bands, gdal.GDT_UInt16)
    west, south, east, north = box
    dataset.SetGeoTransform((west, (east - west) / size, 0, north, 0, -(north - south) / size))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    dataset.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(bands)
    for i in range(bands):
        band = dataset.GetRasterBand(i + 1)
        band.WriteArray((1000 + 100 * rng.standard_normal((size, size))).astype(np.uint16))
        if descriptions:
            band.SetDescription(descriptions[i])
    if tags:
        dataset.SetMetadata(tags)
    dataset.FlushCache()
    dataset = None
    return str(path)


def read_series(dock, qtbot, paths, modality=None):
    with qtbot.waitSignal(dock.jobDone, timeout=JOB_TIMEOUT_MS,
                          check_params_cb=lambda job, _outcome: job == "series") as blocker:
        dock.series_table.add_paths([str(p) for p in paths], modality)
    assert blocker.args[1]["status"] == "ok", blocker.args
    return dock.series_table


def run_and_wait(dock, qtbot):
    with qtbot.waitSignal(dock.jobDone, timeout=JOB_TIMEOUT_MS,
                          check_params_cb=lambda job, _outcome: job != "series") as blocker:
        qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    return blocker.args


def rows_by_name(table):
    return {table.table.item(r, 0).text(): r for r in range(table.table.rowCount())}


def test_date_table_reads_dates_and_flags_missing_ones(plugin, qtbot, tmp_path) -> None:
    dock = plugin.dock
    dock.set_task("classify")
    dock.options_form.set_value("model", "skysense-tiny")  # the paper's bands: ten of Sentinel-2
    assert dock.series_table.isVisibleTo(dock)
    assert "s2" not in dock.options_form.widgets, "the table supplies the inputs"
    dated = write_raster(tmp_path / "S2A_MSIL2A_20230715T103031_T32TMR.tif", 10)
    tagged = write_raster(tmp_path / "scene_b.tif", 10, tags={"ACQUISITION_DATE": "2023-08-02"})
    undated = write_raster(tmp_path / "scene_c.tif", 10)
    table = read_series(dock, qtbot, [dated, tagged, undated])
    rows = rows_by_name(table)
    assert [table.modality(r) for r in rows.values()] == ["s2"] * 3, "ten bands: Sentinel-2"
    assert table.date_text(rows["S2A_MSIL2A_20230715T103031_T32TMR.tif"]) == "2023-07-15"
    assert table.table.item(rows["scene_b.tif"], 3).text() == "metadata"
    assert table.date_text(rows["scene_c.tif"]) == ""
    assert "no date" in table.row_problem(rows["scene_c.tif"])

    qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    assert dock.task is None, "nothing runs with a date missing"
    assert "scene_c.tif: no date" in dock.statusLabel.text()

    table.table.item(rows["scene_c.tif"], 2).setText("2023-09-01")  # the user types the date
    assert table.row_problem(rows["scene_c.tif"]) == ""
    assert table.table.item(rows["scene_c.tif"], 3).text() == "edited"
    params = dock.job_params("classify")
    assert params["s2"].split(",") == [dated, tagged, undated]
    assert params["s2_dates"] == "2023-07-15,2023-08-02,2023-09-01"
    table.table.item(rows["scene_c.tif"], 2).setText("1st of Sept")
    assert "not a date" in table.row_problem(rows["scene_c.tif"])


def test_date_table_flags_grids_that_do_not_match_and_bad_bands(plugin, qtbot, tmp_path) -> None:
    dock = plugin.dock
    dock.set_task("prototypes")
    dock.options_form.set_value("model", "skysense-tiny")  # the paper's bands: ten of Sentinel-2
    here = write_raster(tmp_path / "S2_20230601.tif", 10)
    far = (BOX[0] + 50_000, BOX[1], BOX[2] + 50_000, BOX[3])
    elsewhere = write_raster(tmp_path / "S1_20230603.tif", 2, box=far, descriptions=("VV", "VH"))
    five = write_raster(tmp_path / "S2_20230610.tif", 5, descriptions=("B2", "B3", "B4", "B8", "B11"))
    table = read_series(dock, qtbot, [here, elsewhere, five])
    rows = rows_by_name(table)
    assert table.modality(rows["S1_20230603.tif"]) == "s1", "two bands: Sentinel-1"
    assert "lacks the bands" in table.row_problem(rows["S2_20230610.tif"])
    assert any("do not overlap" in p for p in table.problems)
    assert "do not overlap" in table.statusLabel.text()
    qtbot.mouseClick(dock.runButton, Qt.MouseButton.LeftButton)
    assert dock.task is None
    assert "Fix the inputs first" in dock.statusLabel.text()


def test_one_modality_only_runs(plugin, iface, sample_layer, qtbot, tmp_path) -> None:
    """A Sentinel-1 series alone (no optical input at all) makes a prototype map."""
    dock = plugin.dock
    show_layer(iface, sample_layer)
    dock.set_task("prototypes")
    dock.options_form.set_value("model", "skysense-tiny")  # random weights: the pipeline, quickly
    dock.set_area_mode("whole")
    series = [write_raster(tmp_path / f"S1_2023060{d}.tif", 2, descriptions=("VV", "VH")) for d in (1, 7)]
    table = read_series(dock, qtbot, series)
    assert dock.job_params("prototypes")["s1_dates"] == "2023-06-01,2023-06-07"
    dock.options_form.set_value("out", str(tmp_path / "map"))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("prototypes", "ok"), outcome
    assert list(outcome["result"]["provenance"]["inputs"]) == ["s1"]
    assert table.table.rowCount() == 2


def test_train_classify_and_identify_prototypes(plugin, iface, sample_layer, qtbot, tmp_path) -> None:
    dock = plugin.dock
    plugin.action.trigger()
    show_layer(iface, sample_layer)
    dock.set_area_mode("whole")
    panel = dock.labels_panel
    labels = panel.create_labels(str(tmp_path / "labels.gpkg"))
    squares = {"water": [(448700, 4169000), (448900, 4171500)], "land": [(443700, 4173000), (444300, 4172600)]}
    for name, corners in squares.items():
        label_class = panel.add_class(name)
        for x, y in corners:
            labels.add_label(QgsGeometry.fromRect(QgsRectangle(x, y, x + 400, y + 400)), UTM18, label_class.class_id)
    panel.refresh_classes()

    dock.set_task("train-skysense")  # on the default, bundled SkySense: the scene as one Sentinel-2 date
    table = read_series(dock, qtbot, [SAMPLE_SCENE], "s2")
    assert "date" in table.row_problem(0)
    table.set_date(0, "2018-06-15")
    assert not table.row_problem(0)
    dock.options_form.set_value("grid_gsd_m", 80.0)
    dock.options_form.set_value("out", str(tmp_path / "skysense-head"))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("train-skysense", "ok"), outcome
    assert dock.last_skysense_model == str(tmp_path / "skysense-head")
    assert "Head saved" in dock.resultBrowser.toPlainText()

    dock.set_task("classify")
    assert dock.options_form.values()["model"] == str(tmp_path / "skysense-head"), "the new model is offered"
    assert dock.series_table.table.rowCount() == 1, "the inputs stay"
    dock.options_form.set_value("grid_gsd_m", 80.0)
    dock.options_form.set_value("out", str(tmp_path / "classes"))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("classify", "ok"), outcome
    root = QgsProject.instance().layerTreeRoot()
    group = next(node for node in root.children() if root.isGroup(node))  # the newest, under the labels
    classes = next(node.layer() for node in group.findLayers() if node.layer().name() == "SkySense classes")
    assert {c.label for c in classes.renderer().classes()} == {"water", "land"}
    assert "SkySense classes" in dock.resultBrowser.toPlainText(), "classify's own page, not the training's"
    assert "Head saved" not in dock.resultBrowser.toPlainText()

    dock.set_task("prototypes")
    dock.options_form.set_value("grid_gsd_m", 80.0)
    dock.options_form.set_value("out", str(tmp_path / "prototypes"))
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("prototypes", "ok"), outcome
    layer = dock.prototypeLayerCombo.currentLayer()
    assert isinstance(layer, QgsRasterLayer)
    assert layer.source() == outcome["result"]["outputs"]["prototypes"]
    assert not dock.prototypeGroup.isCollapsed()

    # Opacity: the slider is the layer's own opacity.
    dock.prototypeOpacitySlider.setValue(40)
    assert abs(layer.renderer().opacity() - 0.4) < 1e-6

    # Identify: a click in the middle of the map lists every prototype of the region, best first.
    qtbot.waitUntil(lambda: dock.identifyPrototypeButton.height() > 0)  # the group opened with the new map
    qtbot.mouseClick(dock.identifyPrototypeButton, Qt.MouseButton.LeftButton)
    assert iface.canvas.mapTool() is dock._identify_tool
    identified = []
    dock._identify_tool.identified.connect(identified.append)
    viewport = iface.canvas.viewport()
    centre = QPoint(viewport.width() // 2, viewport.height() // 2)
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=centre)
    assert len(identified) == 1
    info = identified[0]
    assert info is not None
    assert len(info["prototypes"]) == 16
    similarities = [p["similarity"] for p in info["prototypes"]]
    assert similarities == sorted(similarities, reverse=True)
    assert all(p["nearest_class"]["name"] in ("water", "land") for p in info["prototypes"])
    text = dock.resultBrowser.toPlainText()
    assert f"region {info['region']}" in text
    assert "Nearest class" in text
    # The cell's assigned prototype in the map is the most similar one.
    value = layer.dataProvider().sample(iface.canvas.getCoordinateTransform().toMapCoordinates(centre), 1)[0]
    assert int(value) == info["prototypes"][0]["index"]
    assert dock.identify_panel.isVisible()
    assert f"region {info['region']}" in dock.identify_panel.browser.toPlainText()
    dock.grab().save(str(tmp_path / "dock.png"))
    dock.identify_panel.grab().save(str(tmp_path / "identify.png"))
    qtbot.mouseClick(dock.identifyPrototypeButton, Qt.MouseButton.LeftButton)
    assert iface.canvas.mapTool() is not dock._identify_tool


def test_the_sample_scene_is_read_as_sentinel2_and_its_name_fits(plugin, qtbot, tmp_path) -> None:
    """Four bands described B02, B03, B04, B08: Sentinel-2, not a high-resolution image."""
    from qgis.PyQt.QtWidgets import QAbstractScrollArea

    dock = plugin.dock
    plugin.action.trigger()
    qtbot.waitUntil(dock.isVisible)
    qtbot.wait(50)  # laid out at its default width
    default_width = dock.width()
    dock.set_task("classify")
    long_name = tmp_path / "S2B_MSIL2A_20230715T155819_N0509_R097_T18SVG_20230715T201405_coast.tif"
    long_name.write_bytes(SAMPLE_SCENE.read_bytes())
    table = read_series(dock, qtbot, [str(long_name)])
    assert table.modality(0) == "s2", "band descriptions B02... say Sentinel-2"
    item = table.table.item(0, 0)
    assert item.text() == long_name.name, "the whole file name, elided in the middle when narrow"
    assert item.toolTip() == str(long_name)
    assert table.table.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert table.table.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    qtbot.wait(50)
    header = table.table.horizontalHeader()
    assert header.length() <= table.table.viewport().width() + 1, "the columns fit the table"
    viewport = dock.findChild(QAbstractScrollArea, "dockScroll").viewport()
    right = table.mapTo(viewport, QPoint(table.width(), 0)).x()
    assert right <= viewport.width(), "the table fits the dock"
    assert dock.width() == default_width, "and the dock keeps its width"
    assert table.table.item(0, 2).toolTip() == "From the file name", "where the date came from"
    assert table.date_text(0) == "2023-07-15"
