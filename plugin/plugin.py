"""The plugin class: toolbar button, menu entry, dock, Processing provider and the worker's life."""

from __future__ import annotations

import threading
from typing import Any, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from .first_use import BundledWeightsOffer
from .processing.provider import ICON_PATH, TerrafuseProvider
from .qt_compat import QAction
from .settings import PluginSettings
from .tasks import LOG_TAG
from .worker_client import WorkerClient

MENU = "&Terrafuse"


def _log_worker_line(line: str) -> None:
    failed = " ERROR " in line or line.startswith("Traceback")
    level = Qgis.MessageLevel.Critical if failed else Qgis.MessageLevel.Info
    QgsMessageLog.logMessage(line, LOG_TAG, level)


class TerrafusePlugin:
    """What QGIS loads: ``initGui``/``unload`` for the desktop, ``initProcessing`` for qgis_process."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.settings = PluginSettings()
        self.action: Optional[QAction] = None
        self.dock = None
        self.provider: Optional[TerrafuseProvider] = None
        self.first_use: Optional[BundledWeightsOffer] = None
        self._client: Optional[WorkerClient] = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> WorkerClient:
        """The worker, created on first use (the process itself starts with the first job)."""
        with self._client_lock:
            if self._client is None:
                self._client = WorkerClient(self.settings.python_path, on_log=_log_worker_line,
                                            env=self.settings.worker_env())
            return self._client

    def initProcessing(self) -> None:
        if self.provider is None:
            self.provider = TerrafuseProvider(lambda: self.client)
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        from .dock import TerrafuseDock  # the dock needs a GUI; qgis_process never reaches here

        self.initProcessing()
        self.action = QAction(QIcon(ICON_PATH), "Terrafuse", self.iface.mainWindow())
        self.action.setObjectName("TerrafuseAction")
        self.action.setCheckable(True)
        self.action.setToolTip("Terrafuse: land-cover mapping with foundation models")
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.dock = TerrafuseDock(self.iface, self.client, self.settings, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        # A plugin installed from the zip lacks the bundled weights: offered when the dock first opens.
        self.first_use = BundledWeightsOffer(self.iface, lambda: self.settings.models_dir,
                                             lambda: self.dock.show_model_manager())
        self.action.toggled.connect(lambda shown: shown and self.first_use.check())

    def unload(self) -> None:
        if self.first_use is not None:
            self.first_use.close()
            self.first_use = None
        if self.dock is not None:
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self._client is not None:
            self._client.stop()
            self._client = None


