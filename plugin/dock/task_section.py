"""The dock's Task section: the task, its one-line help, its form (generated from the job's schema), the SkySense
date table, and the job's parameters gathered from the whole dock."""

from __future__ import annotations

import html
import os
import re
import time
from typing import Any, Dict, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import QLineEdit

from ...backend import jobs
from ..area import AreaError
from ..dates_table import SERIES_PARAMS, InputsError, SeriesTable
from ..job_form import JobOptionsForm
from ..settings import profile_folder
from ..tasks import JobTask

#: The jobs the dock offers; each later capability adds its job here.
DOCK_TASKS = ("segment", "train", "classify", "train-skysense", "prototypes", "inspect")
#: The SkySense jobs: their inputs come from the date table, their model from the last SkySense training.
SKYSENSE_GROUP = "SkySense"
#: Parameters the dock fills from its own widgets; every other one gets a widget in the options form.
DOCK_SUPPLIED = ("image", "aoi", "labels", "cluster", "actors", "threads", "in_flight")


def run_folder(job: str, stamp: Optional[str] = None) -> str:
    """A new folder for a job's outputs in the profile: runs never overwrite each other."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(profile_folder(), "runs", f"{job}-{stamp}")
    suffix = 1
    while os.path.exists(folder):
        suffix += 1
        folder = os.path.join(profile_folder(), "runs", f"{job}-{stamp}-{suffix}")
    return folder


def run_folder_hint(job: str) -> str:
    """The placeholder of an empty output folder: the new folder a run makes (in the profile's runs folder)."""
    return f"new: {job}-<time>"


#: The end of the help's first sentence or clause: ". " before a capital (not "Fig. 5", "eq. 1"), or "; " or ": ".
_SENTENCE_END = re.compile(r"(?<!Fig)(?<!eq)\.\s+(?=[A-Z])|[;:]\s")


def first_sentence(text: str) -> str:
    """The task's help up to its first full stop or semicolon: one line under the task, the rest as tooltip."""
    match = _SENTENCE_END.search(text)
    return text if match is None else text[:match.start()].rstrip(".") + "."


class TaskSection(QObject):
    """Behaviour of the Task widgets; ``taskChanged(job)`` after the form was rebuilt."""

    taskChanged = pyqtSignal(str)
    seriesRead = pyqtSignal(object)  # the series job's outcome

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self.options_form: Optional[JobOptionsForm] = None
        self.last_head: Optional[str] = None  # the head the last training saved, offered to Segment
        self.last_skysense_model: Optional[str] = None  # the model the last SkySense training saved
        self.series_task: Optional[JobTask] = None
        for name in DOCK_TASKS:
            if name in jobs.JOBS:  # a job this backend version lacks is not offered
                dock.taskCombo.addItem(jobs.JOBS[name].title, name)
        self.series_table = SeriesTable(dock.iface, dock.optionsContainer)
        dock.optionsLayout.insertWidget(0, self.series_table)
        self.series_table.readRequested.connect(self.read_series)
        dock.taskCombo.currentIndexChanged.connect(self.rebuild_form)

    @property
    def current_job(self) -> str:
        return self.dock.taskCombo.currentData()

    def set_task(self, job: str) -> None:
        self.dock.taskCombo.setCurrentIndex(self.dock.taskCombo.findData(job))

    def is_skysense(self, job: str) -> bool:
        spec = jobs.JOBS[job]
        return spec.group == SKYSENSE_GROUP and any(p.name == "s2" for p in spec.params)

    def rebuild_form(self) -> None:
        """The current task's help and form (and the date table for the SkySense tasks)."""
        dock = self.dock
        job = self.current_job
        spec = jobs.JOBS[job]
        dock.taskHelpLabel.setText(first_sentence(spec.help))
        dock.taskHelpLabel.setToolTip(spec.help)
        if self.options_form is not None:
            dock.optionsLayout.removeWidget(self.options_form)
            self.options_form.deleteLater()
        skysense = self.is_skysense(job)
        self.series_table.setVisible(skysense)
        supplied = DOCK_SUPPLIED + (SERIES_PARAMS if skysense else ())
        self.options_form = JobOptionsForm(spec, supplied, dock.optionsContainer, output_hint=run_folder_hint(job))
        for param in spec.params:
            if param.kind == "output_folder" and param.name in self.options_form.widgets:
                widget = self.options_form.widgets[param.name]
                widget.setToolTip(f"{widget.toolTip()}. Empty: a new folder in {os.path.dirname(run_folder(job))}")
        dock.optionsLayout.addWidget(self.options_form)
        last = self.last_skysense_model if spec.group == SKYSENSE_GROUP else self.last_head
        if last and "model" in self.options_form.widgets:
            self.options_form.set_value("model", last)
        model_field = self.options_form.widgets.get("model")
        if skysense and isinstance(model_field, QLineEdit):  # each model reads its own bands: check again
            model_field.editingFinished.connect(self.series_table.request_read)
        self.taskChanged.emit(job)

    def job_params(self, job: str) -> Dict[str, Any]:
        """The job's parameters from the dock's widgets; raises AreaError with a user message."""
        dock = self.dock
        spec = jobs.JOBS[job]
        names = {p.name for p in spec.params}
        params: Dict[str, Any] = {}
        if "image" in names:
            layer = dock.input.raster
            if layer is None:
                raise AreaError("Choose a raster layer first")
            params["image"] = layer.source()
        if "aoi" in names:
            area = dock.input.current_area()
            if area is not None:
                params["aoi"] = area.write()
        if "labels" in names:
            labels = dock.labels_panel.labels
            if labels is None:
                raise AreaError("Choose or create a labels layer first (the Labels section)")
            params["labels"] = labels.path
        if self.is_skysense(job):  # the inputs and their dates: the date table
            try:
                params.update(self.series_table.job_params())
            except InputsError as exc:
                raise AreaError(str(exc)) from None
        cluster = dock.backend.cluster_address  # the Backend section's Ray cluster
        if "cluster" in names and cluster:
            params["cluster"] = cluster
            params.update(dock.backend.placement.values(names))
        if self.options_form is not None and self.options_form.spec.name == job:
            params.update(self.options_form.values())
        for param in spec.params:  # a required output folder left empty: a new one in the profile
            if param.kind == "output_folder" and param.required and not params.get(param.name):
                params[param.name] = run_folder(job)
        return params

    # -- SkySense: the date table ---------------------------------------------------------------
    def read_series(self, params: Dict[str, Any]) -> JobTask:
        """Dates and checks of the table's rasters from the worker (the ``series`` job), against the bands
        of the model chosen in the options (each SkySense model reads its own bands)."""
        model = self.options_form.values().get("model") if self.options_form is not None else None
        if model and jobs.JOBS[self.current_job].group == SKYSENSE_GROUP:
            params = {**params, "model": model}
        task = JobTask(self.dock.client, "series", params, "Terrafuse: reading the dates of the inputs")
        task.jobFinished.connect(self._on_series_read)
        self.series_task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_series_read(self, outcome: Dict[str, Any]) -> None:
        self.series_task = None
        if outcome["status"] == "ok":
            self.series_table.apply_series(outcome["result"])
        else:
            message = (outcome.get("message") or "").strip()
            self.series_table.statusLabel.setText(html.escape(message.splitlines()[0] if message else ""))
        self.seriesRead.emit(outcome)
