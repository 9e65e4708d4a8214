"""First use of a plugin installed from plugins.qgis.org: the zip leaves the bundled backbone's weights out
(the site takes 20 MB), so the first time the dock opens the message bar offers to download them, through
the model manager (progress, verified against the sha256 the catalogue pins, a clear message offline).

Whether a bundled folder is complete is read from its ``checksums.sha256`` and the files on disk, in the
plugin and where the model manager completes it (``<models folder>/bundled/<folder>``, the backend's
``fetched_bundled_folder``): no worker is started for a checkout, which has every file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import QPushButton

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources" / "models"
CHECKSUMS_NAME = "checksums.sha256"


def _listed_files(folder: Path) -> List[str]:
    lines = (folder / CHECKSUMS_NAME).read_text(encoding="utf-8").splitlines()
    return [line.split(maxsplit=1)[1].strip() for line in lines if len(line.split(maxsplit=1)) == 2]


def incomplete_bundled(models_dir: str, bundled_dir: Path = BUNDLED_DIR) -> List[str]:
    """Bundled model folders with files in neither the plugin nor the models folder's completed copy."""
    incomplete = []
    for folder in sorted(p for p in bundled_dir.iterdir() if (p / CHECKSUMS_NAME).is_file()):
        names = _listed_files(folder)
        fetched = Path(models_dir) / "bundled" / folder.name
        if any(not (folder / n).is_file() for n in names) and any(not (fetched / n).is_file() for n in names):
            incomplete.append(folder.name)
    return incomplete


class BundledWeightsOffer:
    """Pushes the offer to the message bar (once per session) and, on a click, downloads in the model manager."""

    def __init__(self, iface: Any, models_dir: Callable[[], str], open_manager: Callable[[], Any]) -> None:
        self.iface = iface
        self.models_dir = models_dir
        self.open_manager = open_manager
        self.shown = False
        self.button: Optional[QPushButton] = None
        self.item: Any = None

    def check(self) -> bool:
        """Show the offer if a bundled folder is incomplete; whether it was shown."""
        folders = incomplete_bundled(self.models_dir())
        if self.shown or not folders:
            return False
        self.shown = True
        bar = self.iface.messageBar()
        widget = bar.createMessage("Terrafuse", "the bundled backbone's weights are not downloaded yet (34 MB, once).")
        self.button = QPushButton("Download…", widget)
        self.button.setObjectName("TerrafuseDownloadBundled")
        self.button.clicked.connect(lambda: self.download(folders))
        widget.layout().addWidget(self.button)
        self.item = bar.pushWidget(widget, Qgis.MessageLevel.Info)
        return True

    def close(self) -> None:
        """Take the offer off the message bar (the plugin is unloading)."""
        if self.item is not None:
            self.iface.messageBar().popWidget(self.item)
            self.item = None

    def download(self, folders: List[str]) -> Any:
        """Open the model manager; once its list is read, download the bundled models of ``folders``."""
        dialog = self.open_manager()
        self.close()

        def after_list(action: str, outcome: dict) -> None:
            if action != "list":
                return
            dialog.actionDone.disconnect(after_list)
            for model in dialog.models:
                if model.get("kind") == "bundled" and model.get("source") in folders and model.get("missing_files"):
                    dialog.select(model["name"])
                    dialog.download(model["name"])
                    return

        dialog.actionDone.connect(after_list)
        return dialog
