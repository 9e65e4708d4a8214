"""Set up backend, the GPU word, and diagnostics, from the dock."""

from __future__ import annotations

import json
from pathlib import Path

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QApplication
from terrafuse_under_test.plugin.settings import PluginSettings

TIMEOUT_MS = 300_000
# iniconfig 2.3.1's wheel and source archive on PyPI (as in requirements/qgis-test.txt): the set-up installs by hash.
INICONFIG = ("iniconfig==2.3.1 --hash=sha256:67f4b9c50da0dedf52af349e7749a80a9057a5031199791b906c3bb3ae878960 "
             "--hash=sha256:9121e2c1fdb355232495be3194c8dfe87ccc2d5dee45947b78e68f499790d7a7\n")


def test_setup_makes_an_environment_and_switches_the_worker_to_it(plugin, qtbot, tmp_path) -> None:
    dock = plugin.dock
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(INICONFIG)
    folder = tmp_path / "backend-env"
    with qtbot.waitSignal(dock.jobDone, timeout=TIMEOUT_MS) as setup:
        dock.setup_backend(confirm=False, folder=str(folder), requirements=requirements, base_python="/usr/bin/python3")
    job, outcome = setup.args
    assert (job, outcome["status"]) == ("setup", "ok"), outcome
    assert outcome["python"] == str(folder / "bin" / "python")
    assert PluginSettings().python_path == outcome["python"]
    assert plugin.client.python == outcome["python"]
    # The check that follows runs in the new environment, which has no torch: it says so, clearly.
    with qtbot.waitSignal(dock.jobDone, timeout=TIMEOUT_MS) as check:
        pass
    job, outcome = check.args
    assert (job, outcome["status"]) == ("selftest", "error")
    assert "No module named" in dock.statusLabel.text()


def test_a_failed_setup_is_reported(plugin, qtbot, tmp_path) -> None:
    dock = plugin.dock
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("terrafuse-no-such-package-anywhere==0.0.1 --hash=sha256:" + "0" * 64 + "\n")
    python_before = plugin.client.python
    with qtbot.waitSignal(dock.jobDone, timeout=TIMEOUT_MS) as setup:
        dock.setup_backend(confirm=False, folder=str(tmp_path / "env"), requirements=requirements,
                           base_python="/usr/bin/python3")
    assert setup.args[1]["status"] == "error"
    assert dock.statusLabel.text().startswith("Set up backend:")
    assert plugin.client.python == python_before
    assert dock.setupBackendButton.isEnabled()


def test_an_unusable_gpu_is_shown_in_red(plugin) -> None:
    dock = plugin.dock
    result = {"device": "cpu", "torch": "2.14.1+cpu", "devices": [{"type": "cpu", "cores": 2}],
              "gpu_check": {"status": "gpu_unusable",
                            "message": "A GPU is present but torch is a CPU-only build, so the models would run "
                                       "on the CPU."}}
    dock.show_result("selftest", result)
    assert "c62828" in dock.backendLabel.text()
    assert "CPU-only build" in dock.backendLabel.text()


def test_diagnostics_are_one_click_and_copyable(plugin, qtbot, tmp_path, monkeypatch) -> None:
    dock = plugin.dock
    models = tmp_path / "models"
    models.mkdir()
    (models / "head.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(PluginSettings, "models_dir", property(lambda self: str(models)))
    with qtbot.waitSignal(dock.jobDone, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.diagnosticsButton, Qt.MouseButton.LeftButton)
    report = done.args[1]["result"]["report"]
    for expected in ("## System", "QGIS: 3.22", "## Backend", "torch: 2.14.1", "head.safetensors  7 B  sha256",
                     "## Last worker errors"):
        assert expected in report
    dialog = dock.diagnostics_dialog
    assert dialog.isVisible()
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == report
    dialog.close()
    assert json.loads((Path(models) / ".terrafuse-sha256.json").read_text())
