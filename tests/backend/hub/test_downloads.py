"""Resumable downloads against a stand-in server on 127.0.0.1: dropped connections, checksums, ranges, and
crafted cases: a junk partial file, a planted link, no checksum, redirects to another host or to http."""

from __future__ import annotations

import hashlib
import os

import pytest

from backend.errors import UserError
from backend.hub.download import Checksums, download_file, part_path, url_host
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
            download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), retries=0,
                          retry_wait_s=0)
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
            download_file(server.url("other.zip"), tmp_path / "other.zip", checksums=Checksums(md5=MD5))
        with pytest.raises(UserError, match="the published file changed"):
            download_file(server.url("model.zip"), tmp_path / "model.zip", size_b=len(PAYLOAD) + 1,
                          checksums=Checksums(md5=MD5))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://zenodo.org/x.zip", "http://zenodo.org/x.zip",
                                 "http://localhost:8000/x.zip"])
def test_only_https_addresses_are_fetched(tmp_path, url):
    with pytest.raises(UserError, match="only https"):
        download_file(url, tmp_path / "x", checksums=Checksums(sha256=SHA256))
    assert not list(tmp_path.iterdir())


def test_a_cancel_keeps_the_part_file(tmp_path):
    from backend.errors import JobCancelled

    progress = Progress(min_interval_s=0)
    progress.cancel()  # checked after the first chunk is written
    with StandInFileServer({"model.zip": PAYLOAD}) as server, pytest.raises(JobCancelled):
        download_file(server.url("model.zip"), tmp_path / "model.zip", progress=progress,
                      checksums=Checksums(sha256=SHA256))
    assert part_path(tmp_path / "model.zip").stat().st_size > 0


def test_no_checksum_is_refused_before_any_byte_and_unverified_is_explicit(tmp_path):
    target = tmp_path / "model.zip"
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        with pytest.raises(UserError, match="No checksum is known for model.zip"):
            download_file(server.url("model.zip"), target)
        assert server.requests == []
        assert not tmp_path.joinpath("model.zip.part").exists()
        part_path(target).write_bytes(b"junk that nothing can check" * 100)  # never resumed without a checksum
        sha256 = download_file(server.url("model.zip"), target, unverified=True)
    assert sha256 == SHA256
    assert target.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.file_requests("model.zip")] == [""]


@pytest.mark.parametrize("junk", [b"\0" * 1_000_000, os.urandom(len(PAYLOAD) - 10)])
def test_a_junk_partial_file_is_verified_as_a_whole_and_fetched_again(tmp_path, junk):
    target = tmp_path / "model.zip"
    part_path(target).write_bytes(junk)  # planted, or left by a broken disk
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        sha256 = download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), retry_wait_s=0)
    assert sha256 == SHA256
    assert target.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.file_requests("model.zip")] == [f"bytes={len(junk)}-", ""]


def test_a_junk_partial_file_of_a_changed_server_file_is_refused(tmp_path):
    target = tmp_path / "model.zip"
    part_path(target).write_bytes(PAYLOAD[:1000])
    with StandInFileServer({"model.zip": os.urandom(len(PAYLOAD))}) as server, \
            pytest.raises(UserError, match="does not match its published sha256"):
        download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), retry_wait_s=0)
    assert not target.exists()
    assert not part_path(target).exists()
    assert len(server.file_requests("model.zip")) == 2  # the resume, then once from the start


def test_a_planted_link_at_the_part_file_is_never_followed(tmp_path):
    victim = tmp_path / "user model.safetensors"
    victim.write_bytes(b"the user's weights")
    target = tmp_path / "models" / "model.zip"
    target.parent.mkdir()
    part_path(target).symlink_to(victim)
    with StandInFileServer({"model.zip": PAYLOAD}) as server:
        download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256))
    assert victim.read_bytes() == b"the user's weights"
    assert target.read_bytes() == PAYLOAD
    assert not target.is_symlink()


def test_a_redirect_to_another_host_is_refused(tmp_path):
    target = tmp_path / "model.zip"
    with StandInFileServer({"model.zip": PAYLOAD}) as other, StandInFileServer({}) as server:
        server.redirects["model.zip"] = other.url("model.zip")  # 127.0.0.1, another port: another server
        with pytest.raises(UserError, match="not one of the source's hosts"):
            download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), retries=0)
        assert other.requests == []
        # The source's hosts may name both: then the redirect is followed.
        hosts = [url_host(server.endpoint), url_host(other.endpoint)]
        download_file(server.url("model.zip"), target, checksums=Checksums(sha256=SHA256), hosts=hosts)
    assert target.read_bytes() == PAYLOAD


@pytest.mark.parametrize("location", ["http://zenodo.org/files/model.zip", "http://localhost:1/model.zip",
                                      "file:///etc/passwd", "ftp://127.0.0.1/model.zip"])
def test_a_redirect_away_from_https_is_refused(tmp_path, location):
    with StandInFileServer({}) as server:
        server.redirects["model.zip"] = location
        with pytest.raises(UserError, match="only https|Redirection to url 'file:.*is not allowed"):
            download_file(server.url("model.zip"), tmp_path / "model.zip", checksums=Checksums(sha256=SHA256),
                          retries=0)
    assert not list(tmp_path.iterdir())
