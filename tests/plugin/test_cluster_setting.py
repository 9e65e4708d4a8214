"""The Ray cluster address in the dock's Backend section: kept in the settings, sent as the mapping jobs'
``cluster`` parameter, never to the jobs without one."""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Tuple

from qgis.PyQt.QtCore import Qt

from tests.conftest import PACKAGE_NAME
from tests.plugin.test_dock import run_and_wait


def record_submissions(dock, monkeypatch) -> List[Tuple[str, Dict[str, Any]]]:
    """The worker client's submissions, recorded; each then fails as a worker error would."""
    worker_client = importlib.import_module(f"{PACKAGE_NAME}.plugin.worker_client")
    sent: List[Tuple[str, Dict[str, Any]]] = []

    def submit(job: str, params: Dict[str, Any]):
        sent.append((job, dict(params)))
        raise worker_client.WorkerError("recorded, not run")

    monkeypatch.setattr(dock.client, "submit", submit)
    return sent


def test_the_cluster_address_reaches_the_segment_job(plugin, sample_layer, qtbot, monkeypatch, tmp_path) -> None:
    settings_module = importlib.import_module(f"{PACKAGE_NAME}.plugin.settings")
    dock = plugin.dock
    plugin.action.trigger()
    dock.backendGroup.setCollapsed(False)
    assert dock.clusterEdit.text() == ""
    qtbot.mouseClick(dock.clusterEdit, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(dock.clusterEdit, "ray://10.0.0.5:10001")
    qtbot.keyClick(dock.clusterEdit, Qt.Key.Key_Return)
    assert settings_module.PluginSettings().cluster_address == "ray://10.0.0.5:10001"

    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("segment")
    assert "cluster" not in dock.options_form.widgets  # the Backend section supplies it
    dock.options_form.set_value("model", str(tmp_path / "head"))
    sent = record_submissions(dock, monkeypatch)
    job, outcome = run_and_wait(dock, qtbot)
    assert (job, outcome["status"]) == ("segment", "error")
    assert sent[0][0] == "segment"
    assert sent[0][1]["cluster"] == "ray://10.0.0.5:10001"

    dock.set_task("inspect")  # a job without the parameter never gets it
    run_and_wait(dock, qtbot)
    assert sent[1][0] == "inspect"
    assert "cluster" not in sent[1][1]

    dock.clusterEdit.clear()  # cleared: the tiles run in the worker again
    dock.set_task("segment")
    dock.options_form.set_value("model", str(tmp_path / "head"))
    run_and_wait(dock, qtbot)
    assert "cluster" not in sent[2][1]


def test_a_saved_address_is_shown_in_a_new_dock(plugin, iface) -> None:
    settings_module = importlib.import_module(f"{PACKAGE_NAME}.plugin.settings")
    settings_module.PluginSettings().cluster_address = " local "
    plugin.unload()
    package = importlib.import_module(PACKAGE_NAME)
    second = package.classFactory(iface)
    second.initGui()
    try:
        assert second.dock.clusterEdit.text() == "local"
    finally:
        second.unload()
