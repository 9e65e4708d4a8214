"""The QGIS side of Terrafuse: everything that touches QGIS or Qt. Never imports torch."""
