"""Terrafuse's Processing provider, for batch use, the graphical modeler and qgis_process."""

from __future__ import annotations

import os
from typing import Callable

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ...backend import jobs
from ..worker_client import PLUGIN_ROOT, WorkerClient
from .algorithm import JobAlgorithm

ICON_PATH = os.path.join(PLUGIN_ROOT, "resources", "icons", "terrafuse.svg")


class TerrafuseProvider(QgsProcessingProvider):
    """One algorithm per registered job; all share the plugin's worker."""

    def __init__(self, client_factory: Callable[[], WorkerClient]) -> None:
        super().__init__()
        self._client_factory = client_factory

    def id(self) -> str:
        return "terrafuse"

    def name(self) -> str:
        return "Terrafuse"

    def longName(self) -> str:
        return "Terrafuse: remote-sensing foundation models"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def loadAlgorithms(self) -> None:
        for spec in jobs.JOBS.values():
            self.addAlgorithm(JobAlgorithm(spec, self._client_factory))
