"""The plugin's settings, kept in QgsSettings under ``terrafuse/``."""

from __future__ import annotations

import os

from qgis.core import QgsApplication, QgsSettings

from .worker_client import default_python

_PREFIX = "terrafuse/"
#: The worker's models folder (backend/hub/paths.py reads it; spelled here so the plugin needs no backend import).
MODELS_DIR_ENV = "TERRAFUSE_MODELS_DIR"


def profile_folder() -> str:
    """Terrafuse's folder inside the user's QGIS profile."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "terrafuse")


class PluginSettings:
    """Typed access to the few settings the plugin keeps."""

    def __init__(self) -> None:
        self._settings = QgsSettings()

    def _get(self, key: str, default: str) -> str:
        return self._settings.value(_PREFIX + key, "", type=str) or default

    @property
    def python_path(self) -> str:
        """The backend's interpreter; empty in the settings means the default."""
        return self._get("python", default_python())

    @python_path.setter
    def python_path(self, value: str) -> None:
        self._settings.setValue(_PREFIX + "python", value.strip())

    @property
    def torch_build(self) -> str:
        """"auto", "cpu", "default" or a CUDA tag such as "cu128"."""
        return self._get("torch_build", "auto")

    @torch_build.setter
    def torch_build(self, value: str) -> None:
        self._settings.setValue(_PREFIX + "torch_build", value)

    @property
    def backend_env_dir(self) -> str:
        """Where Set up backend makes the environment."""
        return self._get("backend_env_dir", os.path.join(profile_folder(), "backend-env"))

    @property
    def models_dir(self) -> str:
        return self._get("models_dir", os.path.join(profile_folder(), "models"))

    @models_dir.setter
    def models_dir(self, value: str) -> None:
        self._settings.setValue(_PREFIX + "models_dir", value.strip())

    @property
    def cluster_address(self) -> str:
        """The Ray cluster the tile jobs run on ("local", host:port, ray://host:port); empty: the worker."""
        return self._get("cluster", "")

    @cluster_address.setter
    def cluster_address(self, value: str) -> None:
        self._settings.setValue(_PREFIX + "cluster", value.strip())

    def cluster_option(self, key: str) -> int:
        """A Ray placement option of the dock ("actors", "threads", "in_flight"); 0: fitted to the cluster."""
        try:
            return max(0, int(self._get("cluster_" + key, "0")))
        except ValueError:
            return 0

    def set_cluster_option(self, key: str, value: int) -> None:
        self._settings.setValue(_PREFIX + "cluster_" + key, str(max(0, int(value))))

    def worker_env(self) -> dict:
        """What the worker's environment gets from the settings: the models folder."""
        return {MODELS_DIR_ENV: self.models_dir}
