"""The Processing algorithms: the same jobs, for batch use, the modeler and qgis_process."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import processing
from qgis.core import QgsApplication

from scripts.package import build
from tests.conftest import BACKEND_PYTHON, SAMPLE_SCENE


def test_inspect_through_processing(plugin, tmp_path) -> None:
    target = tmp_path / "inspect.json"
    outputs = processing.run("terrafuse:inspect", {"IMAGE": str(SAMPLE_SCENE), "RESULT_JSON": str(target)})
    result = json.loads(target.read_text())
    assert result["count"] == 4
    assert json.loads(outputs["RESULT"])["crs"] == "EPSG:32618"


def test_parameters_come_from_the_job_schema(plugin) -> None:
    algorithm = QgsApplication.processingRegistry().algorithmById("terrafuse:inspect")
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["IMAGE", "AOI", "MAX_SAMPLES_PX", "RESULT_JSON"]
    assert not algorithm.parameterDefinition("IMAGE").flags() & 0x8  # FlagOptional
    assert algorithm.parameterDefinition("AOI").flags() & 0x8
    segment = QgsApplication.processingRegistry().algorithmById("terrafuse:segment")
    model = segment.parameterDefinition("MODEL")
    assert model.behavior() == model.Folder, "a head is a folder: the picker must pick folders"


def test_the_package_holds_the_plugin_only(tmp_path) -> None:
    archive = build(tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert all(name.startswith("terrafuse/") for name in names)
    assert "terrafuse/metadata.txt" in names
    assert "terrafuse/ui/dock.ui" in names
    assert "terrafuse/backend/worker.py" in names
    forbidden = ("/tests/", "/.venv", "__pycache__", ".pyc", "/.git/")
    assert not [name for name in names if any(part in name for part in forbidden)]


def test_the_unzipped_package_loads_in_qgis(tmp_path, iface, monkeypatch) -> None:
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(build(tmp_path / "dist")) as archive:
        archive.extractall(plugins)
    monkeypatch.syspath_prepend(str(plugins))
    package = importlib.import_module("terrafuse")
    assert Path(package.__file__).parent == plugins / "terrafuse"
    instance = package.classFactory(iface)
    instance.initGui()
    assert instance.dock.taskCombo.count() >= 1
    assert instance.action in iface.plugin_toolbar.actions()
    instance.unload()
    assert iface.plugin_toolbar.actions() == []


def test_the_package_installs_and_qgis_process_lists_it(tmp_path) -> None:
    """Unzip into an empty profile's plugins folder, enable it, list and run its algorithms."""
    profile = tmp_path / "profile"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(build(tmp_path / "dist")) as archive:
        archive.extractall(plugins)
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen",
               XDG_CACHE_HOME=str(tmp_path / "cache"), TERRAFUSE_PYTHON=BACKEND_PYTHON)

    def qgis_process(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["qgis_process.bin", *args], env=env, capture_output=True, text=True, timeout=180,
                              check=False)

    enabled = qgis_process("plugins", "enable", "terrafuse")
    assert enabled.returncode == 0, enabled.stderr
    listed = qgis_process("list")
    assert "terrafuse:inspect" in listed.stdout, listed.stdout[-2000:] + listed.stderr[-2000:]
    assert "terrafuse:info" in listed.stdout
    ran = qgis_process("--json", "run", "terrafuse:inspect", "--", f"IMAGE={SAMPLE_SCENE}")
    assert ran.returncode == 0, ran.stderr[-2000:]
    result = json.loads(json.loads(ran.stdout)["results"]["RESULT"])
    assert result["bands"][3]["description"] == "B08 nir"
    assert Path(plugins / "terrafuse" / "metadata.txt").exists()


def test_make_qgis_links_the_checkout_as_the_plugin(tmp_path) -> None:
    """What `make qgis` does before it opens QGIS: link, enable, and the algorithms are there."""
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path), QT_QPA_PLATFORM="offscreen",
               XDG_CACHE_HOME=str(tmp_path / "cache"), TERRAFUSE_PYTHON=BACKEND_PYTHON)
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["python3", str(root / "scripts" / "link_plugin.py"), "--name", "terrafuse"], env=env, check=True)
    link = tmp_path / "profiles" / "default" / "python" / "plugins" / "terrafuse"
    assert link.is_symlink()
    assert link.resolve() == root
    enabled = subprocess.run(["qgis_process.bin", "plugins", "enable", "terrafuse"], env=env, capture_output=True,
                             text=True, timeout=180, check=False)
    assert enabled.returncode == 0, enabled.stderr
    listed = subprocess.run(["qgis_process.bin", "list"], env=env, capture_output=True, text=True, timeout=180,
                            check=False)
    assert "terrafuse:segment" in listed.stdout
