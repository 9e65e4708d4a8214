"""The Ray placement row under the cluster address (actors, threads per actor, batches in flight): kept in
the settings, sent with the address to the jobs that have them, never without an address."""

from __future__ import annotations

import importlib

from tests.conftest import PACKAGE_NAME
from tests.plugin.test_cluster_setting import record_submissions
from tests.plugin.test_dock import run_and_wait


def test_the_placement_goes_with_the_address_to_the_segment_job(plugin, sample_layer, qtbot, monkeypatch,
                                                                 tmp_path) -> None:
    settings_module = importlib.import_module(f"{PACKAGE_NAME}.plugin.settings")
    dock = plugin.dock
    plugin.action.trigger()
    dock.backendGroup.setCollapsed(False)
    boxes = dock.clusterPlacement.boxes
    assert [box.text() for box in boxes.values()] == ["auto actors", "auto threads", "auto in flight"]
    boxes["actors"].setValue(5)
    boxes["threads"].setValue(4)
    assert settings_module.PluginSettings().cluster_option("actors") == 5
    assert settings_module.PluginSettings().cluster_option("in_flight") == 0

    dock.rasterCombo.setLayer(sample_layer)
    dock.set_task("segment")
    assert not {"actors", "threads", "in_flight"} & set(dock.options_form.widgets)  # the Backend section's
    dock.options_form.set_value("model", str(tmp_path / "head"))
    sent = record_submissions(dock, monkeypatch)
    dock.clusterEdit.setText("127.0.0.1:6379")
    run_and_wait(dock, qtbot)
    assert sent[0][1]["cluster"] == "127.0.0.1:6379"
    assert (sent[0][1]["actors"], sent[0][1]["threads"]) == (5, 4)
    assert "in_flight" not in sent[0][1]  # auto: the backend's default

    dock.clusterEdit.clear()  # no cluster: no placement either
    run_and_wait(dock, qtbot)
    assert not {"cluster", "actors", "threads"} & set(sent[1][1])
    dock.grab().save(str(tmp_path / "dock.png"))
