"""The dock's progress bar and status line: the phase with its count and time left, the device on a line of its
own, one clean line for a failure with the log behind a "Details" link."""

from __future__ import annotations

import html
from typing import Any, Optional

from qgis.core import Qgis
from qgis.PyQt.QtCore import QObject, Qt
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit, QVBoxLayout, QWidget

from ..job_progress import ProgressState, duration_text

DETAILS_LINK = "details"


class DetailsDialog(QDialog):
    """The whole message of a failure and the last lines the worker logged, selectable."""

    def __init__(self, text: str, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("TerrafuseDetails")
        self.setWindowTitle("Terrafuse — details")
        self.text = QPlainTextEdit(text, self)
        self.text.setReadOnly(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(640, 360)


class StatusView(QObject):
    """Behaviour of ``progressBar`` and ``statusLabel``."""

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.bar = dock.progressBar
        self.label = dock.statusLabel
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                           | Qt.TextInteractionFlag.LinksAccessibleByMouse)
        self.label.linkActivated.connect(self._on_link)
        self.details = ""
        self.details_dialog: Optional[DetailsDialog] = None

    def set_text(self, text: str) -> None:
        self.details = ""
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setText(text)

    def start(self, text: str) -> None:
        self.bar.setValue(0)
        self.set_text(text)

    def progress(self, state: ProgressState) -> None:
        """A job's step: the bar never goes backwards (the tracker sees to it), the device on its own line."""
        self.bar.setValue(max(self.bar.value(), state.percent))
        text = state.status_line()
        self.set_text(text + (f"\n{state.device}" if state.device else ""))

    def setup_progress(self, done: int, total: int, message: str, left_s: float) -> None:
        """Set up backend's steps (not a worker job: no phases)."""
        if total > 0:
            self.bar.setValue(int(100 * done / total))
        eta = f", about {duration_text(left_s)} left" if left_s >= 0 else ""
        self.set_text(f"{done} of {total} done{eta} — {message}")

    def failed(self, message: str, details: str = "", warn: bool = True) -> None:
        """One clean line (the message's first), the bar reset, everything else behind "Details"."""
        self.bar.setValue(0)
        first = message.strip().splitlines()[0] if message.strip() else "The job failed"
        self.details = details or message
        if self.details.strip() != first:
            self.label.setTextFormat(Qt.TextFormat.RichText)
            self.label.setText(f"{html.escape(first)} <a href='{DETAILS_LINK}'>Details</a>")
        else:
            self.set_text(first)
        if warn:
            self.dock.iface.messageBar().pushMessage("Terrafuse", first, level=Qgis.MessageLevel.Warning,
                                                     duration=8)

    def show_details(self) -> DetailsDialog:
        self.details_dialog = DetailsDialog(self.details, self.dock)
        self.details_dialog.show()
        return self.details_dialog

    def _on_link(self, link: str) -> None:
        if link == DETAILS_LINK:
            self.show_details()
