"""In real QGIS: the plugin loaded from the zip `make package` builds finds its bundled backbone through the model
manager, which downloads the weights the zip leaves out from a stand-in release server on 127.0.0.1."""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

from scripts.package import PLUGIN_NAME, build, version, write_assets
from tests.backend.hub.stand_in_files import StandInFileServer
from tests.plugin.conftest import flush_deletes
from tests.plugin.test_model_manager_dialog import JOB_TIMEOUT_MS, row_of


@pytest.fixture
def zipped_plugin(iface, tmp_path):
    out = tmp_path / "dist"
    archive, assets = build(out), write_assets(out)
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(archive).extractall(plugins)
    sys.path.insert(0, str(plugins))
    QgsSettings().remove("terrafuse")  # default settings, but a models folder of the test's own
    QgsSettings().setValue("terrafuse/models_dir", str(tmp_path / "models"))
    try:
        package = importlib.import_module(PLUGIN_NAME)
        assert Path(package.__file__).parent == plugins / PLUGIN_NAME
        instance = package.classFactory(iface)
        instance.initGui()
        yield instance, assets
        instance.unload()
        flush_deletes()
    finally:
        sys.path.remove(str(plugins))
        for name in [m for m in sys.modules if m == PLUGIN_NAME or m.startswith(f"{PLUGIN_NAME}.")]:
            del sys.modules[name]


def test_the_zipped_plugin_downloads_its_bundled_weights_in_the_model_manager(zipped_plugin, qtbot, tmp_path,
                                                                             monkeypatch):
    plugin, assets = zipped_plugin
    plugin.first_use.shown = True  # the message bar's offer has a test of its own
    plugin.action.trigger()
    qtbot.mouseClick(plugin.dock.modelsButton, Qt.MouseButton.LeftButton)
    dialog = plugin.dock.model_manager
    qtbot.waitUntil(lambda: dialog.task is None and bool(dialog.models), timeout=JOB_TIMEOUT_MS)  # the list
    folder = tmp_path / "models"
    assert dialog.folderWidget.filePath() == str(folder)
    tiny = next(m for m in dialog.models if m["name"] == "terrafuse-tiny")
    assert not tiny["installed"]
    assert dialog.table.item(row_of(dialog, "terrafuse-tiny"), 3).text() == "no"
    dialog.select("terrafuse-tiny")
    assert dialog.downloadButton.isEnabled()

    asked: list[str] = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda parent, title, text, *args: asked.append(text) or QMessageBox.StandardButton.Yes)
    files = {f"v{version()}/{asset.name}": asset.read_bytes() for asset in assets}
    progress: list[int] = []
    dialog.progressBar.valueChanged.connect(progress.append)
    with StandInFileServer(files) as server:
        dialog.client.set_env("TERRAFUSE_RELEASE_URL", f"{server.endpoint}/files")
        with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS,
                              check_params_cb=lambda action, outcome: action == "download") as done:
            qtbot.mouseClick(dialog.downloadButton, Qt.MouseButton.LeftButton)
    assert done.args[1]["status"] == "ok", done.args
    assert len(asked) == 1
    assert "34.4 MB" in asked[0]
    assert "Unverified" not in asked[0]  # each file's sha256 is pinned
    assert len(server.file_requests(f"v{version()}/{assets[0].name}")) == 1
    assert dialog.progressBar.value() == 100
    assert dialog.table.item(row_of(dialog, "terrafuse-tiny"), 3).text() == "yes"
    assert (folder / "bundled" / "terrafuse-tiny-diffusion" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as verified:
        qtbot.mouseClick(dialog.verifyButton, Qt.MouseButton.LeftButton)
    assert verified.args[1]["status"] == "ok", verified.args
    assert json.dumps(verified.args[1]["result"]["files_checked"]) == "8"
    dialog.close()


def test_the_zipped_plugin_offers_the_download_when_the_dock_first_opens(zipped_plugin, qtbot, tmp_path, monkeypatch):
    plugin, assets = zipped_plugin
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    files = {f"v{version()}/{asset.name}": asset.read_bytes() for asset in assets}
    with StandInFileServer(files) as server:
        plugin.client.set_env("TERRAFUSE_RELEASE_URL", f"{server.endpoint}/files")
        plugin.action.trigger()  # the dock opens for the first time
        button = plugin.iface.messageBar().findChild(QPushButton, "TerrafuseDownloadBundled")
        assert button is not None
        assert "weights are not downloaded yet" in plugin.iface.messageBar().currentItem().text()
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        dialog = plugin.dock.model_manager
        outcomes: list = []
        dialog.actionDone.connect(lambda action, outcome: outcomes.append((action, outcome["status"])))
        qtbot.waitUntil(lambda: ("download", "ok") in outcomes and dialog.task is None, timeout=JOB_TIMEOUT_MS)
    assert [action for action, _ in outcomes][-2:] == ["info", "download"]  # the record first, as a click does
    assert dialog.selected_name() == "terrafuse-tiny"
    assert dialog.table.item(row_of(dialog, "terrafuse-tiny"), 3).text() == "yes"
    assert plugin.first_use.item is None  # the offer left the message bar
    plugin.action.trigger()
    plugin.action.trigger()
    assert plugin.iface.messageBar().findChild(QPushButton, "TerrafuseDownloadBundled") is None  # offered once
    dialog.close()


def test_a_checkout_is_complete_and_offers_nothing(plugin):
    plugin.action.trigger()
    assert not plugin.first_use.shown
    assert plugin.first_use.item is None
