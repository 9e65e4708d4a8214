"""Identify on a prototype map: regions named with their hemispheres and their number among all, a table that
reads in the dock's pane, and a window beside the map away from the clicked spot."""

from __future__ import annotations

from qgis.PyQt.QtCore import QPoint, QRect
from terrafuse_under_test.plugin.prototype_identify import (
    PrototypeIdentifyPanel,
    identify_html,
    latitude_text,
    longitude_text,
    region_text,
)

INFO = {
    "region": 18, "region_count": 64, "bounds_deg": [-90.0, 0.0, -45.0, 45.0], "has_head": True,
    "prototypes": [{"index": i, "similarity": 0.9 - 0.1 * i, "colour": "#336699", "pixels": 10 * i,
                    "nearest_class": {"name": "water", "probability": 0.8}} for i in range(8)],
}


def test_hemispheres_and_region_wording() -> None:
    assert (longitude_text(-90), longitude_text(-45), longitude_text(0), longitude_text(135)) == \
        ("90°W", "45°W", "0°", "135°E")
    assert (latitude_text(-10), latitude_text(45)) == ("10°S", "45°N")
    assert region_text(INFO) == "region 18 of 64, 90°W to 45°W, 0° to 45°N"


def test_the_dock_gets_a_short_table_the_window_the_whole_one(qtbot) -> None:
    from qgis.PyQt.QtWidgets import QTextBrowser

    compact = identify_html(INFO, compact=True)
    assert "region 18 of 64" in compact
    assert "Nearest class" in compact
    assert "… and 3 more" in compact
    browser = QTextBrowser()
    qtbot.addWidget(browser)
    browser.resize(330, 400)
    browser.setHtml(compact)
    browser.show()
    qtbot.wait(20)
    assert browser.horizontalScrollBar().maximum() == 0, "no header breaks or sideways scrolling in the dock"
    full = identify_html(INFO)
    assert full.count("<tr>") >= 9
    assert "Prob." in full
    browser.resize(440, 400)  # the identify window's width
    browser.setHtml(full)
    qtbot.wait(20)
    assert browser.horizontalScrollBar().maximum() == 0


def test_the_window_opens_beside_the_map_away_from_the_click(iface, qtbot) -> None:
    canvas = iface.canvas
    panel = PrototypeIdentifyPanel(iface.window)
    for fx in (0.2, 0.8):
        click = QPoint(int(canvas.viewport().width() * fx), canvas.viewport().height() // 2)
        panel.show_info(INFO, canvas, click)
        qtbot.waitUntil(panel.isVisible)
        spot = canvas.viewport().mapToGlobal(click)
        frame = QRect(panel.frameGeometry())
        assert not frame.contains(spot), (fx, frame, spot)
        assert "region 18 of 64" in panel.browser.toPlainText()
    panel.close()
