"""Content hashes recorded once; zip archives extracted once, safely."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from backend.errors import UserError
from backend.hub import checksums
from backend.hub.archives import extract_zip
from backend.hub.checksums import HASH_RECORD_NAME, files_sha256


def test_hash_covers_names_and_contents_and_is_recorded(tmp_path, monkeypatch):
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    expected = hashlib.sha256(
        f"a.safetensors\0{hashlib.sha256(b'weights').hexdigest()}\n"
        f"config.json\0{hashlib.sha256(b'{}').hexdigest()}\n".encode()
    ).hexdigest()
    assert files_sha256(tmp_path, ["config.json", "a.safetensors"]) == expected
    assert (tmp_path / HASH_RECORD_NAME).is_file()
    calls = []
    monkeypatch.setattr(checksums, "file_sha256", lambda path: calls.append(path) or "x")
    assert files_sha256(tmp_path, ["a.safetensors", "config.json"]) == expected
    assert calls == []
    (tmp_path / "a.safetensors").write_bytes(b"other weights")  # new size: the record no longer holds
    assert files_sha256(tmp_path, ["a.safetensors", "config.json"]) != expected
    assert len(calls) == 2


def test_unwritable_folders_record_in_the_cache(tmp_path, terrafuse_cache, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"w")
    write_record = checksums._write_record

    def read_only_folder(path, record):  # tests run as root here, so chmod cannot make a folder read-only
        return False if path.parent == tmp_path else write_record(path, record)

    monkeypatch.setattr(checksums, "_write_record", read_only_folder)
    first = files_sha256(tmp_path, ["w.safetensors"])
    assert not (tmp_path / HASH_RECORD_NAME).exists()
    assert len(list((terrafuse_cache / "hashes").glob("*.json"))) == 1
    monkeypatch.setattr(checksums, "file_sha256", lambda path: pytest.fail("recorded hash not reused"))
    assert files_sha256(tmp_path, ["w.safetensors"]) == first


def test_record_outside_the_folder_when_asked(tmp_path, terrafuse_cache):
    (tmp_path / "w.safetensors").write_bytes(b"w")
    files_sha256(tmp_path, ["w.safetensors"], record_in_folder=False)
    assert not (tmp_path / HASH_RECORD_NAME).exists()
    assert len(list((terrafuse_cache / "hashes").glob("*.json"))) == 1


def test_zip_is_extracted_once_into_the_cache(tmp_path, terrafuse_cache):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("top/vae/config.json", "{}")
    folder = extract_zip(archive)
    assert folder.parent == terrafuse_cache / "extracted"
    assert (folder / "top" / "vae" / "config.json").read_text() == "{}"
    (folder / "top" / "marker").write_text("kept")
    assert extract_zip(archive) == folder
    assert (folder / "top" / "marker").exists()  # not extracted again


def test_unsafe_or_corrupt_zips_are_user_errors(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(UserError, match="unsafe"):
        extract_zip(evil)
    assert not (tmp_path.parent / "outside.txt").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="corrupt"):
        extract_zip(broken)
    with pytest.raises(UserError, match="not found"):
        extract_zip(tmp_path / "missing.zip")
