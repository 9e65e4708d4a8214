"""The model manager in the dock, in real QGIS: the catalogue through the worker, a download from a stand-in
Zenodo on 127.0.0.1 (source, size and licence shown first, progress, then installed and verified), a cancel
in the middle, an import from a local archive, and the models folder the user chooses reaching the worker."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QMessageBox

from tests.backend.hub.stand_in_files import StandInFileServer

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "resources" / "models" / "terrafuse-tiny-diffusion"
JOB_TIMEOUT_MS = 120_000


def zipped_backbone(top: str = "diffusionsat") -> bytes:
    """A zip of the bundled diffusers folder under ``top/``, as DiffusionSat's archives hold one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in BUNDLED.rglob("*") if p.is_file()):
            archive.write(path, f"{top}/{path.relative_to(BUNDLED).as_posix()}")
    return buffer.getvalue()


class SlowFileServer(StandInFileServer):
    """The stand-in Zenodo, sending files in small pieces with pauses, so that a cancel lands mid-download."""

    def _file(self, request, name: str) -> None:
        data = self.files[name]
        request.send_response(200)
        request.send_header("Content-Type", "application/zip")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        try:
            for start in range(0, len(data), 32 * 1024):
                request.wfile.write(data[start:start + 32 * 1024])
                request.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def manager(plugin, qtbot, tmp_path):
    """The dialog opened from the dock's Models button, with its folder set to a fresh one."""
    dock = plugin.dock
    plugin.action.trigger()
    qtbot.mouseClick(dock.modelsButton, Qt.MouseButton.LeftButton)
    dialog = dock.model_manager
    assert dialog is not None
    assert dialog.isVisible()
    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as first:
        pass  # the list job started as the dialog opened; its end arrives through the event loop
    assert first.args[0] == "list"
    assert first.args[1]["status"] == "ok", first.args
    folder = tmp_path / "chosen models"
    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as listed:
        dialog.folderWidget.setFilePath(str(folder))  # as the user picks it in the file widget
    assert listed.args[1]["status"] == "ok", listed.args
    assert listed.args[1]["result"]["models_dir"] == str(folder)
    yield dialog, folder
    dialog.close()


def row_of(dialog, name: str) -> int:
    return next(i for i, m in enumerate(dialog.models) if m["name"] == name)


def test_catalogue_shows_source_size_licence_and_the_folder_reaches_the_worker(manager, plugin):
    dialog, folder = manager
    from qgis.core import QgsSettings

    assert QgsSettings().value("terrafuse/models_dir") == str(folder)
    assert plugin.client.extra_env["TERRAFUSE_MODELS_DIR"] == str(folder)
    names = [m["name"] for m in dialog.models]
    assert {"terrafuse-tiny", "diffusionsat-512", "diffusionsat-256", "sd-2.1", "skysense"} <= set(names)
    row = row_of(dialog, "sd-2.1")
    assert dialog.table.item(row, 1).text() == "Hugging Face hub"
    assert dialog.table.item(row, 2).text() == "5.2 GB"
    assert "Open RAIL" in dialog.table.item(row, 4).text()
    assert dialog.table.item(row_of(dialog, "terrafuse-tiny"), 3).text() == "yes"
    dialog.select("skysense")
    assert not dialog.downloadButton.isEnabled()
    assert dialog.importButton.isEnabled()
    assert "skysense_model_backbone_hr.pth" in dialog.details.toPlainText()


def test_download_shows_the_record_first_then_installs_and_verifies(manager, qtbot, monkeypatch):
    dialog, folder = manager
    data = zipped_backbone()
    asked: list[str] = []

    def answer(parent, title, text, *args):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer)
    with StandInFileServer({"DiffusionSat_512.zip": data}, records={"13751498": ["DiffusionSat_512.zip"]},
                           licence="cc-by-4.0") as server:
        dialog.client.set_env("TERRAFUSE_ZENODO_URL", server.endpoint)
        dialog.select("diffusionsat-512")
        assert dialog.downloadButton.isEnabled()
        progress: list[int] = []
        dialog.progressBar.valueChanged.connect(progress.append)
        with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS,
                              check_params_cb=lambda action, outcome: action == "download") as done:
            qtbot.mouseClick(dialog.downloadButton, Qt.MouseButton.LeftButton)
    assert done.args[1]["status"] == "ok", done.args
    # Before anything was fetched the user saw the source, the size of the record and its licence.
    assert len(asked) == 1
    assert "zenodo.org/records/13751498" in asked[0]
    assert f"{len(data) / 1e6:.1f} MB" in asked[0]
    assert "cc-by-4.0" in asked[0]
    assert "Unverified" in asked[0]  # the catalogue pins no checksum for it: the user is told before agreeing
    archive = folder / "diffusionsat_512.zip"
    assert archive.read_bytes() == data
    manifest = json.loads((folder / "terrafuse_models.json").read_text())
    assert manifest["diffusionsat-512"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["diffusionsat-512"]["unverified"] is True
    assert dialog.table.item(row_of(dialog, "diffusionsat-512"), 3).text() == "yes"
    assert any(0 < value < 100 for value in progress)
    assert dialog.progressBar.value() == 100

    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as verified:
        qtbot.mouseClick(dialog.verifyButton, Qt.MouseButton.LeftButton)
    assert verified.args[1]["status"] == "ok"
    assert verified.args[1]["result"]["verified"]
    assert "verified" in dialog.statusLabel.text()


def test_a_download_is_cancelled_in_the_middle(manager, qtbot, monkeypatch):
    dialog, folder = manager
    payload = bytes(range(256)) * (4 * 4096)  # 4 MB, sent in 32 kB pieces every 50 ms
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    with SlowFileServer({"d256.zip": payload}, records={"13756199": ["d256.zip"]}) as server:
        dialog.client.set_env("TERRAFUSE_ZENODO_URL", server.endpoint)
        dialog.select("diffusionsat-256")
        with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS,
                              check_params_cb=lambda action, outcome: action == "download") as done:
            qtbot.mouseClick(dialog.downloadButton, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: dialog.task is not None and dialog.task.job == "models"
                            and dialog.task.params.get("action") == "download"
                            and 0 < dialog.progressBar.value() < 100, timeout=JOB_TIMEOUT_MS)
            assert dialog.cancelButton.isEnabled()
            qtbot.mouseClick(dialog.cancelButton, Qt.MouseButton.LeftButton)
    assert done.args[1]["status"] == "cancelled", done.args
    assert "cancelled" in dialog.statusLabel.text()
    assert not (folder / "diffusionsat_256.zip").exists()  # only a partial file, kept for a resume
    assert dialog.table.item(row_of(dialog, "diffusionsat-256"), 3).text() == "no"


def test_import_from_a_local_archive_offline(manager, qtbot, tmp_path):
    dialog, folder = manager
    archive = tmp_path / "fetched elsewhere.zip"
    archive.write_bytes(zipped_backbone())
    dialog.client.set_env("TERRAFUSE_ZENODO_URL", "http://127.0.0.1:9")  # nothing listens: offline
    dialog.select("diffusionsat-256")
    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as done:
        dialog.import_model("diffusionsat-256", str(archive))
    assert done.args[1]["status"] == "ok", done.args
    result = done.args[1]["result"]
    assert result["installed"]
    assert result["path"] == str(archive)
    assert (Path(result["extracted"]) / "unet").is_dir() or any(Path(result["extracted"]).rglob("unet"))
    assert dialog.table.item(row_of(dialog, "diffusionsat-256"), 3).text() == "yes"
    manifest = json.loads((folder / "terrafuse_models.json").read_text())
    assert manifest["diffusionsat-256"]["installed_by"] == "import"


def test_a_skysense_folder_without_the_official_files_is_refused(manager, qtbot, tmp_path):
    dialog, _ = manager
    empty = tmp_path / "not skysense"
    empty.mkdir()
    with qtbot.waitSignal(dialog.actionDone, timeout=JOB_TIMEOUT_MS) as done:
        dialog.import_model("skysense", str(empty))
    assert done.args[1]["status"] == "error"
    assert done.args[1]["user_error"]
    assert "none of the SkySense files" in dialog.statusLabel.text()
