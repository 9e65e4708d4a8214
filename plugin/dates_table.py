"""The SkySense inputs as a table: one row per raster (file, modality, date, where the date came from, check).

The user adds files or the layers selected in the layer tree; the modality is guessed from the band
descriptions (B02, B8A...: Sentinel-2; VV, VH: Sentinel-1), else from the band count (2: Sentinel-1, 6 (a
Landsat OLI B2-B7 stack, read as Sentinel-2 by a model with a band mask) or 10 or more: Sentinel-2, else high
resolution) and can be changed; file names are elided in the middle (the whole path in
the tooltip) so that the table fits the dock; the dates and the checks
come from the backend's ``series`` job (the same functions the SkySense jobs use, so that the table and
the job never disagree), and every date can be edited. A series raster without a valid date is flagged
in red, and :meth:`SeriesTable.job_params` refuses to run until it has one.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from qgis.core import QgsRasterLayer
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QBrush, QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

#: (key, label) of the modalities, in the order of F_T (eq. 1 of the SkySense paper); short, for a narrow dock.
MODALITIES = (("hr", "High res."), ("s2", "Sentinel-2"), ("s1", "Sentinel-1"))
#: The job parameters the table supplies (the options form leaves them out).
SERIES_PARAMS = ("hr", "s2", "s2_dates", "s1", "s1_dates")
COLUMNS = ("File", "Modality", "Date", "Found in", "Check")
FILE, MODALITY, DATE, SOURCE, CHECK = range(len(COLUMNS))
PROBLEM_COLOUR = QColor("#c62828")
#: Where a date came from (the series job's ``date_source``), in words for the date's tooltip.
DATE_SOURCES = {"filename": "the file name", "metadata": "the file's metadata", "given": "the job's parameters"}


class InputsError(Exception):
    """What keeps the table's inputs from running, in words for the user."""


#: Sentinel-2 band names as descriptions spell them: B2, B02, B8A, B11 (with or without words after them).
_S2_BAND = re.compile(r"^b(0?[1-9]|1[0-2]|8a)\b", re.IGNORECASE)
_S1_BAND = re.compile(r"^(vv|vh|hh|hv)\b", re.IGNORECASE)


def guess_modality(band_count: int, descriptions: Sequence[str] = ()) -> str:
    """The modality a raster most likely is, from its band descriptions (B02... is Sentinel-2, VV/VH
    Sentinel-1), else from its band count (the user can change it)."""
    named = [d.strip() for d in descriptions if d and d.strip()]
    if named and sum(bool(_S2_BAND.match(d)) for d in named) >= max(1, len(named) // 2 + 1):
        return "s2"
    if named and all(_S1_BAND.match(d) for d in named):
        return "s1"
    if band_count == 2:
        return "s1"
    if band_count >= 10 or band_count == 6:  # six: Landsat OLI B2-B7, which SkySense reads as Sentinel-2
        return "s2"
    return "hr"


def parse_date(text: str) -> Optional[datetime.date]:
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError:
        return None


class SeriesTable(QWidget):
    """The table and its buttons. ``readRequested(params)`` asks the dock to run the ``series`` job on the
    rows; :meth:`apply_series` fills the dates and checks from its result."""

    readRequested = pyqtSignal(dict)

    def __init__(self, iface: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.problems: List[str] = []
        self._filling = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        intro = QLabel("Inputs: one row per raster; dates are editable (YYYY-MM-DD)")
        intro.setWordWrap(True)  # never wider than the dock
        layout.addWidget(intro)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setObjectName("seriesTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # the date and tile stay readable
        self.table.setWordWrap(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # fits the dock
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(40)
        header.setSectionResizeMode(FILE, QHeaderView.ResizeMode.Stretch)  # the file name gets what is left
        for column in (MODALITY, DATE):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(CHECK, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(CHECK, 56)  # "OK" or the first words of a problem; the whole in its tooltip
        self.table.setColumnHidden(SOURCE, True)  # where the date came from: the date's tooltip
        self.table.setMinimumHeight(90)
        self.table.setMaximumHeight(170)
        self.table.itemChanged.connect(self._on_item_changed)
        layout.addWidget(self.table)
        buttons = QGridLayout()
        self.addFilesButton = QToolButton(text="Add files…")
        self.addLayersButton = QToolButton(text="Add selected layers")
        self.removeButton = QToolButton(text="Remove")
        self.readButton = QToolButton(text="Read dates")
        for button, tip in ((self.addFilesButton, "Add raster files (one per date of a series)"),
                            (self.addLayersButton, "Add the raster layers selected in the Layers panel"),
                            (self.removeButton, "Remove the selected rows"),
                            (self.readButton, "Read the dates and check the rasters again")):
            button.setToolTip(tip)
        for index, button in enumerate((self.addFilesButton, self.addLayersButton, self.removeButton,
                                        self.readButton)):
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            buttons.addWidget(button, index // 2, index % 2)  # two by two: the table fits a narrow dock
        layout.addLayout(buttons)
        self.statusLabel = QLabel("")
        self.statusLabel.setWordWrap(True)
        layout.addWidget(self.statusLabel)
        self.addFilesButton.clicked.connect(self._add_files_dialog)
        self.addLayersButton.clicked.connect(self.add_selected_layers)
        self.removeButton.clicked.connect(self.remove_selected)
        self.readButton.clicked.connect(self.request_read)

    # -- rows ---------------------------------------------------------------------------------
    def paths(self) -> List[str]:
        return [self.table.item(row, FILE).data(Qt.ItemDataRole.UserRole) for row in range(self.table.rowCount())]

    def add_paths(self, paths: List[str], modality: Optional[str] = None) -> None:
        """Add rasters (skipping those already in the table) and read their dates."""
        known = set(self.paths())
        added = False
        self._filling = True
        try:
            for path in paths:
                if not path or path in known:
                    continue
                known.add(path)
                self._append_row(path, modality or guess_modality(*_bands(path)))
                added = True
        finally:
            self._filling = False
        if added:
            self.request_read()

    def _append_row(self, path: str, modality: str) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        name = QTableWidgetItem(os.path.basename(path))
        name.setData(Qt.ItemDataRole.UserRole, path)
        name.setToolTip(path)
        name.setFlags(name.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(row, FILE, name)
        combo = QComboBox()
        for key, label in MODALITIES:
            combo.addItem(label, key)
        combo.setCurrentIndex(combo.findData(modality))
        combo.currentIndexChanged.connect(lambda _index: self.request_read())
        self.table.setCellWidget(row, MODALITY, combo)
        self.table.setItem(row, DATE, QTableWidgetItem(""))
        for column in (SOURCE, CHECK):
            item = QTableWidgetItem("")
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.table.setItem(row, column, item)

    def add_selected_layers(self) -> None:
        layers = [layer for layer in self.iface.layerTreeView().selectedLayers() if isinstance(layer, QgsRasterLayer)]
        self.add_paths([layer.source() for layer in layers if os.path.isfile(layer.source())])

    def _add_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add rasters", "", "Rasters (*.tif *.tiff *.vrt *.jp2);;All (*)")
        self.add_paths(paths)

    def remove_selected(self) -> None:
        for row in sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)
        self.request_read()

    def clear(self) -> None:
        self.table.setRowCount(0)
        self.problems = []
        self.statusLabel.setText("")

    def modality(self, row: int) -> str:
        return self.table.cellWidget(row, MODALITY).currentData()

    def set_modality(self, row: int, modality: str) -> None:
        combo = self.table.cellWidget(row, MODALITY)
        combo.setCurrentIndex(combo.findData(modality))

    def date_text(self, row: int) -> str:
        return self.table.item(row, DATE).text().strip()

    def set_date(self, row: int, text: str) -> None:
        self.table.item(row, DATE).setText(text)

    def by_modality(self) -> Dict[str, List[int]]:
        rows: Dict[str, List[int]] = {}
        for row in range(self.table.rowCount()):
            rows.setdefault(self.modality(row), []).append(row)
        return rows

    # -- the series job -------------------------------------------------------------------------
    def series_params(self) -> Dict[str, Any]:
        params: Dict[str, Any] = {}
        for modality, rows in self.by_modality().items():
            params[modality] = ",".join(self.table.item(r, FILE).data(Qt.ItemDataRole.UserRole) for r in rows)
        return params

    def request_read(self) -> None:
        if self.table.rowCount():
            self.statusLabel.setText("Reading dates and checking the rasters…")
            self.readRequested.emit(self.series_params())
        else:
            self.problems = []
            self.statusLabel.setText("")

    def apply_series(self, result: Dict[str, Any]) -> None:
        """Fill dates (only where the user has not typed one), sources and checks from the job's result."""
        found = {(r["path"], r["modality"]): r for r in result.get("rows", [])}
        self._filling = True
        try:
            for row in range(self.table.rowCount()):
                path = self.table.item(row, FILE).data(Qt.ItemDataRole.UserRole)
                info = found.get((path, self.modality(row)))
                if info is None:
                    continue
                if not self.date_text(row) or self.table.item(row, SOURCE).text() != "edited":
                    self.set_date(row, info.get("date") or "")
                    self.table.item(row, SOURCE).setText(info.get("date_source") or "")
                    source = info.get("date_source") or ""
                    self.table.item(row, DATE).setToolTip(f"From {DATE_SOURCES.get(source, source)}" if source
                                                          else "No date found: enter it (YYYY-MM-DD)")
                self.table.item(row, CHECK).setData(Qt.ItemDataRole.UserRole, info.get("problem") or "")
        finally:
            self._filling = False
        self.problems = [p for p in result.get("problems", []) if "without a date" not in p]
        self.refresh_checks()

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() != DATE:
            return
        self._filling = True
        try:
            self.table.item(item.row(), SOURCE).setText("edited")
            item.setToolTip("Edited")
        finally:
            self._filling = False
        self.refresh_checks()

    def row_problem(self, row: int) -> str:
        """What is wrong with a row, '' when nothing: the backend's check first, then the date."""
        problem = self.table.item(row, CHECK).data(Qt.ItemDataRole.UserRole) or ""
        if problem:
            return problem
        text = self.date_text(row)
        if self.modality(row) != "hr" and not text:
            return "no date: enter it (YYYY-MM-DD)"
        if text and parse_date(text) is None:
            return f"'{text}' is not a date (YYYY-MM-DD)"
        return ""

    def refresh_checks(self) -> None:
        self._filling = True
        try:
            for row in range(self.table.rowCount()):
                problem = self.row_problem(row)
                check = self.table.item(row, CHECK)
                check.setText("⚠ " + problem.split(";")[0] if problem else "OK")
                check.setToolTip(problem)
                brush = QBrush(PROBLEM_COLOUR) if problem else QBrush()
                for column in (DATE, CHECK):
                    self.table.item(row, column).setForeground(brush)
                date_problem = problem.startswith("no date") or problem.endswith("(YYYY-MM-DD)")
                self.table.item(row, DATE).setBackground(QBrush(QColor("#fde0dc")) if date_problem else QBrush())
        finally:
            self._filling = False
        messages = [f"{self.table.item(r, FILE).text()}: {p}" for r in range(self.table.rowCount())
                    if (p := self.row_problem(r))] + self.problems
        self.statusLabel.setText("<br>".join(f"<span style='color:#c62828'>{m}</span>" for m in messages))

    def job_params(self) -> Dict[str, Any]:
        """hr, s2, s2_dates, s1, s1_dates for the job; :class:`InputsError` when a row must be fixed first."""
        if not self.table.rowCount():
            raise InputsError("Add the SkySense inputs first: a high-resolution image and/or Sentinel-2 or "
                              "Sentinel-1 rasters (Add files… or Add selected layers)")
        problems = [f"{self.table.item(r, FILE).text()}: {p}" for r in range(self.table.rowCount())
                    if (p := self.row_problem(r))]
        if problems or self.problems:
            raise InputsError("Fix the inputs first — " + "; ".join(problems + self.problems))
        params: Dict[str, Any] = {}
        for modality, rows in self.by_modality().items():
            if modality == "hr" and len(rows) > 1:
                raise InputsError("Give one high-resolution image (a series is read for Sentinel-2 and Sentinel-1)")
            params[modality] = ",".join(self.table.item(r, FILE).data(Qt.ItemDataRole.UserRole) for r in rows)
            if modality != "hr":
                params[f"{modality}_dates"] = ",".join(self.date_text(r) for r in rows)
        return params


def _bands(path: str) -> Tuple[int, List[str]]:
    """The band count and band descriptions of a raster (GDAL's, as QGIS names bands "Band 1: B02 blue")."""
    layer = QgsRasterLayer(path, "probe", "gdal")
    if not layer.isValid():
        return 0, []
    names = [layer.bandName(i) for i in range(1, layer.bandCount() + 1)]
    return layer.bandCount(), [name.split(":", 1)[1].strip() if ":" in name else "" for name in names]
