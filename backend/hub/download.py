"""Resumable HTTP downloads of model files, checked against their published checksums.

Model archives are gigabytes on connections that drop: bytes go to ``<file>.part`` and a new attempt
(in the same call, or a later run) asks the server for the rest with an HTTP ``Range`` request. A file
becomes ``<file>`` only once complete and matching its checksum, so a half-downloaded or corrupt file
is never mistaken for a model. The standard library's urllib does the transfer: nothing to install.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import __version__
from ..errors import UserError
from ..progress import Progress

log = logging.getLogger("terrafuse.hub")

_CHUNK_B = 2**20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = f"terrafuse/{__version__} (+https://github.com/terrafuse)"


class _Interrupted(Exception):
    """The connection ended before the announced length."""


@dataclass(frozen=True)
class Checksums:
    """What a file is checked against; either may be unknown (``None``)."""

    sha256: str | None = None
    md5: str | None = None  # Zenodo publishes md5 only


def check_url(url: str) -> str:
    """Only http(s): urllib also opens file:// and ftp://, which a catalogue never means."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"Refusing to download {url!r}: only http and https addresses are fetched")
    return url


def open_url(url: str, headers: dict[str, str] | None = None, timeout_s: float = 60.0):
    """``urlopen`` on an http(s) URL with Terrafuse's user agent."""
    request = urllib.request.Request(check_url(url), headers={"User-Agent": USER_AGENT, **(headers or {})})
    # The scheme is restricted to http(s) by check_url just above.
    return urllib.request.urlopen(request, timeout=timeout_s)  # nosec B310


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _hashes(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(8 * _CHUNK_B):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def _mb(n_bytes: int) -> int:
    return n_bytes // 10**6


def _transfer(url: str, part: Path, size_b: int | None, progress: Progress | None, label: str,
              timeout_s: float) -> int | None:
    """One request for the bytes ``part`` lacks; returns the file's total size when the server said it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = open_url(url, headers, timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset and size_b in (None, offset):
            return offset  # the part file already holds every byte
        if exc.code == 416:
            part.unlink()  # a part file longer than the file: start again
            raise _Interrupted("the partial file did not fit the server's file; starting again") from None
        raise UserError(f"Downloading {label} failed: HTTP {exc.code} {exc.reason} ({url})") from None
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise UserError(f"The server of {label} answered a resume with the wrong byte range")
            total = int(match.group(3)) if match.group(3) != "*" else size_b
        else:
            if offset:
                log.info("%s: the server ignores ranges; downloading from the start", label)
            offset = 0
            total = int(length) if length is not None else size_b
        if size_b is not None and total is not None and total != size_b:
            raise UserError(f"{label} is {total} bytes on the server, but {size_b} were expected: the published "
                            "file changed; the catalogue needs an update")
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    chunk = response.read(_CHUNK_B)
                except http.client.IncompleteRead as exc:
                    out.write(exc.partial)
                    raise _Interrupted(f"connection closed after {done + len(exc.partial)} bytes") from None
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress.update(_mb(done), _mb(total) if total else _mb(done) + 1,
                                    f"{label}: {_mb(done)} of {_mb(total) if total else '?'} MB")
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")
        return total


def download_file(url: str, target: Path, *, checksums: Checksums = Checksums(), size_b: int | None = None,
                  progress: Progress | None = None, retries: int = 5, retry_wait_s: float = 2.0,
                  timeout_s: float = 60.0, label: str | None = None) -> str:
    """Download ``url`` to ``target`` through ``target.part``, resuming; returns the file's sha256.

    A dropped connection is retried ``retries`` times, each asking only for the missing bytes; when
    they are spent the part file stays for the next run. A checksum mismatch removes the part file
    (resuming a corrupt file cannot repair it) and raises :class:`UserError`.
    """
    target = Path(target)
    label = label or target.name
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        try:
            _transfer(url, part, size_b, progress, label, timeout_s)
            break
        except (_Interrupted, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            failures += 1
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if failures > retries:
                kept = f"; {part.stat().st_size // 10**6} MB are kept in {part.name}" if part.exists() else ""
                raise UserError(f"Downloading {label} was interrupted ({reason}){kept}: run the download again "
                                "to resume") from None
            log.warning("%s: %s; resuming (try %d of %d)", label, reason, failures, retries)
            time.sleep(retry_wait_s * failures)
    sha256, md5 = _hashes(part)
    for kind, expected, actual in (("sha256", checksums.sha256, sha256), ("md5", checksums.md5, md5)):
        if expected and expected.lower() != actual:
            part.unlink()
            raise UserError(f"{label} does not match its published {kind} (expected {expected}, got {actual}): "
                            "the download was removed; try again, or the file on the server has changed")
    os.replace(part, target)
    log.info("downloaded %s (%d MB, sha256 %s)", target, target.stat().st_size // 10**6, sha256[:12])
    return sha256
