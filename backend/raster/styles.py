"""QGIS styles (QML) for the outputs, so that each layer opens with the head's class colours and names.

The QML is written by hand (QGIS's own format, as a saved ``.qml`` holds it): the backend never
imports qgis. Raster classes use the paletted renderer; polygons a categorized renderer on
``class_id`` in the same colours; scores a grey ramp over [0, 1].
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .writers import hex_rgba

_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _sorted(classes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(classes, key=lambda c: int(c["id"]))


def paletted_raster_qml(classes: Sequence[dict[str, Any]]) -> str:
    """A paletted renderer of band 1: one entry per class with its colour and name (the legend)."""
    entries = "\n".join(
        f'        <paletteEntry value="{int(c["id"])}" color="{_attr(c["colour"])}" alpha="255" '
        f'label="{_attr(c["name"])}"/>' for c in _sorted(classes))
    return (f'{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">\n  <pipe>\n'
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
            "      <rasterTransparency/>\n      <colorPalette>\n"
            f"{entries}\n      </colorPalette>\n    </rasterrenderer>\n"
            '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
            '    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>\n'
            '    <rasterresampler maxOversampling="2"/>\n  </pipe>\n  <blendMode>0</blendMode>\n</qgis>\n')


def score_raster_qml(black_to_white: bool = True) -> str:
    """A single-band grey renderer stretched over [0, 1] (confidence: dark is unsure)."""
    gradient = "BlackToWhite" if black_to_white else "WhiteToBlack"
    return (f'{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">\n  <pipe>\n'
            f'    <rasterrenderer type="singlebandgray" grayBand="1" gradient="{gradient}" opacity="1" '
            'alphaBand="-1" nodataColor="">\n      <rasterTransparency/>\n'
            "      <contrastEnhancement>\n        <minValue>0</minValue>\n        <maxValue>1</maxValue>\n"
            "        <algorithm>StretchToMinimumMaximum</algorithm>\n      </contrastEnhancement>\n"
            '    </rasterrenderer>\n    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
            '    <rasterresampler maxOversampling="2"/>\n  </pipe>\n  <blendMode>0</blendMode>\n</qgis>\n')


def _fill_symbol(name: str, colour: str) -> str:
    red, green, blue, alpha = hex_rgba(colour)
    options = {"color": f"{red},{green},{blue},{alpha}", "outline_color": f"{red},{green},{blue},255",
               "outline_style": "solid", "outline_width": "0.26", "outline_width_unit": "MM", "style": "solid"}
    option_xml = "".join(f'<Option name="{k}" type="QString" value="{v}"/>' for k, v in options.items())
    prop_xml = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in options.items())
    return (f'      <symbol type="fill" name="{_attr(name)}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            f'          <Option type="Map">{option_xml}</Option>\n          {prop_xml}\n'
            "        </layer>\n      </symbol>\n")


def categorized_polygons_qml(classes: Sequence[dict[str, Any]]) -> str:
    """A categorized renderer on ``class_id`` with each class's colour and name."""
    ordered = _sorted(classes)
    categories = "\n".join(
        f'      <category value="{int(c["id"])}" symbol="{i}" label="{_attr(c["name"])}" render="true"/>'
        for i, c in enumerate(ordered))
    symbols = "".join(_fill_symbol(str(i), c["colour"]) for i, c in enumerate(ordered))
    return (f'{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">\n'
            '  <renderer-v2 type="categorizedSymbol" attr="class_id" symbollevels="0" enableorderby="0" '
            'forceraster="0">\n'
            f"    <categories>\n{categories}\n    </categories>\n    <symbols>\n{symbols}    </symbols>\n"
            "  </renderer-v2>\n  <blendMode>0</blendMode>\n  <featureBlendMode>0</featureBlendMode>\n</qgis>\n")


def write_style(path: Path, qml: str) -> Path:
    path.write_text(qml, encoding="utf-8")
    return path
