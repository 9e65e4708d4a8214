"""`make package`: a zip plugins.qgis.org takes (under 20 MB, only what git tracks, nothing ignored or compiled),
and a plugin unzipped from it that gets the bundled backbone's weights through the model manager (a stand-in
release server on 127.0.0.1), offline afterwards, with a clear message before."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backend.hub.catalogue import CATALOGUE
from scripts.package import MAX_ZIP_BYTES, PLUGIN_NAME, build, git_files, left_out, version, write_assets
from tests.backend.hub.stand_in_files import StandInFileServer
from tests.conftest import ROOT

# Files a working tree holds that must never reach the zip: ignored by .gitignore, compiled, or untracked.
PLANTED = ("resources/sample/sentinel2_coast.tif.aux.xml", "plugin/__pycache__/planted.cpython-311.pyc",
           "backend/planted.pyc", "plugin/not_tracked_by_git.py")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    planted = [ROOT / name for name in PLANTED if not (ROOT / name).exists()]
    try:
        for path in planted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"planted")
        out = tmp_path_factory.mktemp("dist")
        return build(out), write_assets(out)
    finally:
        for path in planted:
            path.unlink()


def test_the_zip_is_under_20_mb_and_holds_only_tracked_plugin_files(package):
    archive, _ = package
    assert archive.name == f"{PLUGIN_NAME}-{version()}.zip"
    assert archive.stat().st_size < MAX_ZIP_BYTES
    names = zipfile.ZipFile(archive).namelist()
    assert all(name.startswith(f"{PLUGIN_NAME}/") for name in names)
    packed = {name[len(PLUGIN_NAME) + 1:] for name in names}
    tracked = set(git_files())
    assert packed <= tracked, sorted(packed - tracked)
    assert not packed & set(PLANTED)
    assert not [n for n in packed if n.endswith((".pyc", ".pyo", ".aux.xml")) or "__pycache__" in n]
    assert not [n for n in packed if n.split("/")[0] in ("tests", "scripts", "docs", "benchmarks", ".venv")]
    assert {"metadata.txt", "__init__.py", "plugin/plugin.py", "backend/worker.py", "ui/dock.ui",
            "resources/models/terrafuse-tiny-skysense/model.safetensors",
            "resources/models/terrafuse-tiny-diffusion/checksums.sha256"} <= packed
    assert not packed & set(left_out())


def test_the_left_out_weights_are_the_pinned_release_assets(package):
    _, assets = package
    entry = CATALOGUE["terrafuse-tiny"]
    assert entry.pinned
    by_name = {asset.name: asset for asset in assets}
    shipped = dict(line.split()[::-1] for line in
                   (ROOT / "resources/models/terrafuse-tiny-diffusion/checksums.sha256").read_text().splitlines())
    for relpath, sha256, size_b in entry.release_files:
        asset = by_name[f"{entry.source}--{relpath.replace('/', '--')}"]
        assert hashlib.sha256(asset.read_bytes()).hexdigest() == sha256 == shipped[relpath]
        assert asset.stat().st_size == size_b


def backend(cwd: Path, *args: str, env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "backend", "--quiet", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_from_the_zip_downloads_its_bundled_weights_verified_then_works_offline(package, tmp_path):
    archive, assets = package
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(archive).extractall(plugins)
    plugin = plugins / PLUGIN_NAME
    env = {**os.environ, "PYTHONPATH": str(plugin), "TERRAFUSE_MODELS_DIR": str(tmp_path / "models"),
           "TERRAFUSE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    load = ("from backend.models.diffusion import load_backbone; b = load_backbone('terrafuse-tiny'); "
            "print(b.root)")

    listed = json.loads(backend(plugin, "models", "list", env=env).stdout)
    tiny = next(m for m in listed["models"] if m["name"] == "terrafuse-tiny")
    assert not tiny["installed"]
    assert sorted(tiny["missing_files"]) == ["unet/diffusion_pytorch_model.safetensors",
                                             "vae/diffusion_pytorch_model.safetensors"]
    before = backend(plugin, env=env, code=load)
    assert before.returncode != 0
    assert "not downloaded yet" in before.stderr
    offline = backend(plugin, "models", "download", "--name", "terrafuse-tiny", "--offline", env=env)
    assert offline.returncode == 2
    assert "Offline: the weights of the bundled model terrafuse-tiny" in offline.stderr

    files = {f"v{version()}/{asset.name}": asset.read_bytes() for asset in assets}
    with StandInFileServer(files) as server:
        release_env = {**env, "TERRAFUSE_RELEASE_URL": f"{server.endpoint}/files"}
        downloaded = backend(plugin, "models", "download", "--name", "terrafuse-tiny", env=release_env)
        assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(r["path"].rsplit("--", 1)[-1] for r in server.requests) == ["diffusion_pytorch_model.safetensors"] * 2
    verified = backend(plugin, "models", "verify", "--name", "terrafuse-tiny", env=env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["files_checked"] == 8
    after = backend(plugin, env=env, code=load)  # no server any more
    assert after.returncode == 0, after.stderr
    assert Path(after.stdout.strip()) == tmp_path / "models" / "bundled" / "terrafuse-tiny-diffusion"
    assert not any((plugin / "resources/models/terrafuse-tiny-diffusion/unet").glob("*.safetensors"))


def test_a_tampered_release_asset_is_refused(package, tmp_path):
    archive, assets = package
    zipfile.ZipFile(archive).extractall(tmp_path / "plugins")
    plugin = tmp_path / "plugins" / PLUGIN_NAME
    files = {f"v{version()}/{asset.name}": asset.read_bytes()[:-1] + b"\0" for asset in assets}
    with StandInFileServer(files) as server:
        env = {**os.environ, "PYTHONPATH": str(plugin), "TERRAFUSE_MODELS_DIR": str(tmp_path / "models"),
               "TERRAFUSE_RELEASE_URL": f"{server.endpoint}/files"}
        result = backend(plugin, "models", "download", "--name", "terrafuse-tiny", env=env)
    assert result.returncode == 2
    assert "does not match its published sha256" in result.stderr
    assert not (tmp_path / "models" / "bundled" / "terrafuse-tiny-diffusion").exists()
