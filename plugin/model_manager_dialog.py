"""The model manager in the dock: the catalogue with source, size and licence, downloads with progress and
cancel, verification, imports from local files, and the models folder the user chooses.

Every action is the backend's ``models`` job (``list``, ``info``, ``download``, ``verify``, ``import``) run
in the worker through a :class:`JobTask`, so the dialog and ``python -m backend models`` behave alike. A
download first reads the model's record (``info``) and shows its source, size and licence before anything
is fetched. The models folder is kept in the settings and given to the worker as ``TERRAFUSE_MODELS_DIR``.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Dict, List, Optional

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
)

from .settings import MODELS_DIR_ENV, PluginSettings
from .tasks import JobTask
from .worker_client import WorkerClient

SOURCE_NAMES = {"bundled": "Bundled", "zip": "Zenodo (zip)", "hub": "Hugging Face hub", "manual": "Manual download"}
COLUMNS = ("Model", "Source", "Size", "Installed", "Licence")
LICENCE_COLUMN = 4
INSTALLED_COLUMN = 3


def size_text(size_mb: Optional[float]) -> str:
    if size_mb is None:
        return "unknown"
    return f"{size_mb / 1000:.1f} GB" if size_mb >= 1000 else f"{size_mb:.1f} MB"


def details_html(model: Dict[str, Any]) -> str:
    """Everything known about one model, for the details pane and the download question."""
    rows = [
        ("Name", model["name"]),
        ("Source", f'{SOURCE_NAMES.get(model["kind"], model["kind"])}: '
                   f'<a href="{html.escape(model.get("url") or "")}">{html.escape(model.get("url") or "")}</a>'),
        ("Size", html.escape(size_text(model.get("size_mb")))),
        ("Licence", html.escape(model.get("licence") or "not stated")),
        ("Installed", html.escape(model["path"]) if model.get("installed") else "no"),
    ]
    if model.get("expected_files"):
        rows.append(("Files", html.escape(", ".join(model["expected_files"]))))
    if model.get("installed_sha256"):
        rows.append(("sha256", html.escape(model["installed_sha256"])))
    body = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
    notes = f"<p>{html.escape(model['notes'])}</p>" if model.get("notes") else ""
    return f"<h3>{html.escape(model.get('title') or model['name'])}</h3><table cellspacing='4'>{body}</table>{notes}"


class ModelManagerDialog(QDialog):
    """``actionDone(action, outcome)`` is emitted when a ``models`` job ends (tests wait on it)."""

    actionDone = pyqtSignal(str, object)

    def __init__(self, client: WorkerClient, settings: PluginSettings, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("TerrafuseModelManager")
        self.setWindowTitle("Terrafuse models")
        self.resize(900, 600)
        self.client = client
        self.settings = settings
        self.models: List[Dict[str, Any]] = []
        self.task: Optional[JobTask] = None
        self.last_outcome: Optional[Dict[str, Any]] = None
        self.confirm_downloads = True  # tests answer the question themselves

        self.folderWidget = QgsFileWidget()
        self.folderWidget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.folderWidget.setFilePath(settings.models_dir)
        self.folderWidget.setToolTip("Where downloaded and imported models are kept")
        folder_row = QHBoxLayout()
        folder_row.addWidget(QLabel("Models folder"))
        folder_row.addWidget(self.folderWidget, 1)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        for column in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        # long text: elided, whole in the tooltip
        header.setSectionResizeMode(LICENCE_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.setWordWrap(False)
        self.details = QTextBrowser()
        self.details.setOpenExternalLinks(True)
        self.details.setMinimumHeight(150)

        self.refreshButton = QPushButton("Refresh")
        self.infoButton = QPushButton("Check source…")
        self.infoButton.setToolTip("Read the model's record: the size and licence a download would fetch")
        self.downloadButton = QPushButton("Download…")
        self.verifyButton = QPushButton("Verify")
        self.importButton = QPushButton("Import from disk…")
        self.importButton.setToolTip("A folder or zip archive you downloaded; SkySense files are converted")
        actions = QHBoxLayout()
        for button in (self.refreshButton, self.infoButton, self.downloadButton, self.verifyButton,
                       self.importButton):
            actions.addWidget(button)
        actions.addStretch(1)

        self.progressBar = QProgressBar()
        self.progressBar.setRange(0, 100)
        self.progressBar.setValue(0)
        self.cancelButton = QPushButton("Cancel")
        self.cancelButton.setEnabled(False)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progressBar, 1)
        progress_row.addWidget(self.cancelButton)
        self.statusLabel = QLabel("")
        self.statusLabel.setWordWrap(True)
        self.statusLabel.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(folder_row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.details, 1)
        layout.addLayout(actions)
        layout.addLayout(progress_row)
        layout.addWidget(self.statusLabel)
        layout.addWidget(buttons)

        self.folderWidget.fileChanged.connect(self.set_models_dir)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.refreshButton.clicked.connect(self.refresh)
        self.infoButton.clicked.connect(lambda: self.check_source(self.selected_name()))
        self.downloadButton.clicked.connect(lambda: self.download(self.selected_name()))
        self.verifyButton.clicked.connect(lambda: self.verify(self.selected_name()))
        self.importButton.clicked.connect(lambda: self.import_model(self.selected_name()))
        self.cancelButton.clicked.connect(self.cancel)
        self._on_selection()

    # -- the models folder ----------------------------------------------------------------------
    def set_models_dir(self, path: str) -> None:
        """Keep the folder in the settings and restart the worker with it, then list again."""
        path = path.strip()
        if not path or path == self.client.extra_env.get(MODELS_DIR_ENV):
            return
        self.settings.models_dir = path
        self.client.set_env(MODELS_DIR_ENV, self.settings.models_dir)
        if self.folderWidget.filePath() != path:
            self.folderWidget.setFilePath(path)
        self.refresh()

    # -- the catalogue --------------------------------------------------------------------------
    def refresh(self) -> Optional[JobTask]:
        return self._run("list", {}, "Listing the models", self._show_list)

    def _show_list(self, result: Dict[str, Any]) -> None:
        selected = self.selected_name()
        self.models = list(result.get("models", []))
        self.table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            cells = (model.get("title") or model["name"], SOURCE_NAMES.get(model["kind"], model["kind"]),
                     size_text(model.get("size_mb")), "yes" if model.get("installed") else "no",
                     model.get("licence") or "not stated")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text if column == LICENCE_COLUMN else model.get("path") or model.get("url") or text)
                item.setData(Qt.ItemDataRole.UserRole, model["name"])
                self.table.setItem(row, column, item)
        self.select(selected or (self.models[0]["name"] if self.models else None))
        self._show_status(f"{len(self.models)} models; folder {result.get('models_dir', '')}")

    def model(self, name: Optional[str]) -> Optional[Dict[str, Any]]:
        return next((m for m in self.models if m["name"] == name), None)

    def select(self, name: Optional[str]) -> None:
        for row, model in enumerate(self.models):
            if model["name"] == name:
                self.table.selectRow(row)
                return

    def selected_name(self) -> Optional[str]:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)

    def _on_selection(self) -> None:
        model = self.model(self.selected_name())
        running = self.task is not None
        kind = model["kind"] if model else ""
        self.infoButton.setEnabled(not running and model is not None)
        missing = bool(model and model.get("missing_files"))  # a bundled model whose weights the zip left out
        self.downloadButton.setEnabled(not running and (kind in ("zip", "hub") or missing))
        self.verifyButton.setEnabled(not running and bool(model and model.get("installed")))
        self.importButton.setEnabled(not running and kind in ("zip", "hub", "manual"))
        self.refreshButton.setEnabled(not running)
        self.details.setHtml(details_html(model) if model else "<p>Choose a model.</p>")

    # -- actions --------------------------------------------------------------------------------
    def check_source(self, name: Optional[str]) -> Optional[JobTask]:
        """``models info``: the size and licence a download would fetch (reads the remote record)."""
        if not name:
            return None
        return self._run("info", {"name": name}, f"Reading the record of {name}", self._show_info)

    def _show_info(self, result: Dict[str, Any]) -> None:
        for index, model in enumerate(self.models):
            if model["name"] == result.get("name"):
                self.models[index] = {**model, **result}
                size = self.table.item(index, 2)
                if size is not None:
                    size.setText(size_text(result.get("size_mb")))
                self.table.item(index, LICENCE_COLUMN).setText(result.get("licence") or "not stated")
        self._on_selection()

    def download(self, name: Optional[str], confirm: Optional[bool] = None) -> Optional[JobTask]:
        """Read the record, show source, size and licence, and download once the user agrees."""
        if not name:
            return None
        ask = self.confirm_downloads if confirm is None else confirm

        def after_info(result: Dict[str, Any]) -> None:
            self._show_info(result)
            if ask and not self._agree_to_download(result):
                self._show_status(f"{name}: download not started")
                return
            params: Dict[str, Any] = {"name": name}
            if ask and not result.get("pinned", True):
                params["unverified"] = True  # the user read the warning and agreed
            self._run("download", params, f"Downloading {name}", self._after_change)

        return self._run("info", {"name": name}, f"Reading the record of {name}", after_info)

    def _agree_to_download(self, model: Dict[str, Any]) -> bool:
        warning = ("" if model.get("pinned", True) else
                   "<p><b>Unverified:</b> Terrafuse's catalogue pins no checksum for this model, so nothing can "
                   "prove the file is the one its authors published. Download it only if you trust the source; "
                   "its record will say unverified.</p>")
        text = (f"{details_html(model)}{warning}<p>Download into <b>{html.escape(self.settings.models_dir)}</b>? "
                "An interrupted download resumes where it stopped and is verified as a whole.</p>")
        buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        answer = QMessageBox.question(self, "Download a model", text, buttons, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def verify(self, name: Optional[str]) -> Optional[JobTask]:
        if not name:
            return None
        return self._run("verify", {"name": name}, f"Verifying {name}", self._after_change)

    def import_model(self, name: Optional[str], path: Optional[str] = None) -> Optional[JobTask]:
        """Import a folder or zip archive the user downloaded (SkySense: the folder of the official files)."""
        model = self.model(name)
        if model is None:
            return None
        if path is None:
            path = self._ask_import_path(model)
            if not path:
                return None
        return self._run("import", {"name": model["name"], "path": path}, f"Importing {model['name']}",
                         self._after_change)

    def _ask_import_path(self, model: Dict[str, Any]) -> str:
        if model["kind"] == "manual":
            return QFileDialog.getExistingDirectory(
                self, f"Folder with {', '.join(model.get('expected_files') or ['the files'])}")
        path, _ = QFileDialog.getOpenFileName(self, f"Archive of {model['name']} (cancel to choose a folder)",
                                              "", "Zip archives (*.zip)")
        return path or QFileDialog.getExistingDirectory(self, f"Folder of {model['name']}")

    def _after_change(self, result: Dict[str, Any]) -> None:
        self._show_info(result)
        message = result.get("message") or ("verified" if result.get("verified") else "done")
        self._show_status(f"{result.get('name', '')}: {message}")
        row = next((i for i, m in enumerate(self.models) if m["name"] == result.get("name")), None)
        if row is not None:
            self.table.item(row, INSTALLED_COLUMN).setText("yes" if result.get("installed") else "no")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # -- running the job ------------------------------------------------------------------------
    def _run(self, action: str, params: Dict[str, Any], description: str,
             on_result: Callable[[Dict[str, Any]], None]) -> Optional[JobTask]:
        if self.task is not None:
            self._show_status("Another model action is running; wait or cancel it", error=True)
            return None
        self.client.extra_env.setdefault(MODELS_DIR_ENV, self.settings.models_dir)
        task = JobTask(self.client, "models", {"action": action, **params}, f"Terrafuse: {description}")
        task.progressMessage.connect(self._on_progress)
        task.jobFinished.connect(lambda outcome: self._on_finished(action, outcome, on_result))
        self.task = task
        self.progressBar.setValue(0)
        self.cancelButton.setEnabled(action in ("download", "verify", "import"))
        self._show_status(f"{description}…")
        self._on_selection()
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_progress(self, done: int, total: int, message: str, left_s: float) -> None:
        if total > 0:
            self.progressBar.setRange(0, 100)
            self.progressBar.setValue(int(100 * done / total))
        else:
            self.progressBar.setRange(0, 0)  # busy
        left = f", about {left_s:.0f} s left" if left_s >= 0 else ""
        self.statusLabel.setText(f"{message}{left}")

    def _on_finished(self, action: str, outcome: Dict[str, Any],
                     on_result: Callable[[Dict[str, Any]], None]) -> None:
        self.task = None
        self.last_outcome = outcome
        self.cancelButton.setEnabled(False)
        self.progressBar.setRange(0, 100)
        changed = action in ("download", "verify", "import")
        self.progressBar.setValue(100 if outcome["status"] == "ok" and changed else 0)
        if outcome["status"] == "ok":
            on_result(outcome["result"])
        elif outcome["status"] == "cancelled":
            self._show_status(f"{action}: cancelled")
        else:
            self._show_status(outcome["message"], error=True)
        self._on_selection()
        self.actionDone.emit(action, outcome)

    def _show_status(self, message: str, error: bool = False) -> None:
        self.statusLabel.setStyleSheet("color: #b00020;" if error else "")
        self.statusLabel.setText(message)
