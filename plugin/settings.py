"""The plugin's settings, kept in QgsSettings under ``terrafuse/``."""

from __future__ import annotations

from qgis.core import QgsSettings

from .worker_client import default_python

_PREFIX = "terrafuse/"


class PluginSettings:
    """Typed access to the few settings the plugin keeps."""

    def __init__(self) -> None:
        self._settings = QgsSettings()

    @property
    def python_path(self) -> str:
        """The backend's interpreter; empty in the settings means the default."""
        value = self._settings.value(_PREFIX + "python", "", type=str)
        return value or default_python()

    @python_path.setter
    def python_path(self, value: str) -> None:
        self._settings.setValue(_PREFIX + "python", value.strip())
