"""Raster access: areas, windows, statistics (rasterio and pyogrio; no qgis)."""
