"""Resumable downloads against a stand-in server on 127.0.0.1: dropped connections, checksums, ranges."""

from __future__ import annotations

import hashlib
import os

import pytest

from backend.errors import UserError
from backend.hub.download import Checksums, download_file, part_path
from backend.progress import Progress
from tests.backend.hub.stand_in_files import StandInFileServer

PAYLOAD = os.urandom(3 * 2**20 + 12345)  # a few chunks of the downloader, not a multiple of one
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path):
    events: list[tuple[int, int, str]] = []
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        server.cut_after["model.zip"] = [1_500_000]
        sha256 = download_file(server.url("model.zip"), tmp_path / "model.zip", size_b=len(PAYLOAD),
                               checksums=Checksums(sha256=SHA256, md5=MD5), retry_wait_s=0,
                               progress=Progress(lambda *e: events.append(e), min_interval_s=0))
    assert sha256 == SHA256
    assert (tmp_path / "model.zip").read_bytes() == PAYLOAD
    assert not part_path(tmp_path / "model.zip").exists()
    assert [r["range"] for r in server.file_requests("model.zip")] == ["", "bytes=1500000-"]
    assert events[-1][0] == events[-1][1] == len(PAYLOAD) // 10**6
    assert "MB" in events[-1][2]


def test_an_interrupted_download_keeps_its_part_file_for_the_next_run(tmp_path):
    target = tmp_path / "model.zip"
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        server.cut_after["model.zip"] = [1_000_000]
        with pytest.raises(UserError, match="interrupted.*run the download again to resume"):
            download_file(server.url("model.zip"), target, retries=0, retry_wait_s=0)
        assert part_path(target).read_bytes() == PAYLOAD[:1_000_000]
        assert not target.exists()
        download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), retries=0)
    assert target.read_bytes() == PAYLOAD
    assert server.file_requests("model.zip")[-1]["range"] == "bytes=1000000-"


def test_a_server_that_ignores_ranges_gets_the_whole_file_again(tmp_path):
    with StandInFileServer({"model.zip": PAYLOAD}, honour_range=False) as server:
        server.cut_after["model.zip"] = [700_000]
        download_file(server.url("model.zip"), tmp_path / "model.zip", checksums=Checksums(md5=MD5), retry_wait_s=0)
    assert (tmp_path / "model.zip").read_bytes() == PAYLOAD


@pytest.mark.parametrize("checksums", [Checksums(sha256="0" * 64), Checksums(sha256=SHA256, md5="f" * 32)])
def test_a_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, checksums):
    target = tmp_path / "model.zip"
    with StandInFileServer({"model.zip": PAYLOAD}) as server, \
            pytest.raises(UserError, match="does not match its published"):
        download_file(server.url("model.zip"), target, checksums=checksums)
    assert not target.exists()
    assert not part_path(target).exists()


def test_a_missing_file_and_a_changed_size_are_user_errors(tmp_path):
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        with pytest.raises(UserError, match="HTTP 404"):
            download_file(server.url("other.zip"), tmp_path / "other.zip")
        with pytest.raises(UserError, match="the published file changed"):
            download_file(server.url("model.zip"), tmp_path / "model.zip", size_b=len(PAYLOAD) + 1)


def test_only_http_addresses_are_fetched(tmp_path):
    with pytest.raises(UserError, match="only http and https"):
        download_file(f"file://{tmp_path}/x", tmp_path / "x")


def test_a_cancel_keeps_the_part_file(tmp_path):
    from backend.errors import JobCancelled

    progress = Progress(min_interval_s=0)
    progress.cancel()  # checked after the first chunk is written
    with StandInFileServer({"model.zip": PAYLOAD}) as server, pytest.raises(JobCancelled):
        download_file(server.url("model.zip"), tmp_path / "model.zip", progress=progress)
    assert part_path(tmp_path / "model.zip").stat().st_size > 0
