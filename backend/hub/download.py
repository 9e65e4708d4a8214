"""Resumable HTTP downloads of model files, verified against checksums pinned in the catalogue.

Model archives are gigabytes on connections that drop: bytes go to ``<file>.part`` and a new attempt
(in the same call, or a later run) asks the server for the rest with an HTTP ``Range`` request. A file
becomes ``<file>`` only once complete and matching its checksum as a whole, so a half-downloaded, corrupt
or planted file is never mistaken for a model: a resumed file that does not match is fetched again from
the start, once. A file without any checksum is refused unless the caller says ``unverified``.

Only https is fetched (plain http only from 127.0.0.1, the tests' stand-in servers), and a redirect is
followed only to https and to the source's known hosts. The part file is opened without following a
symbolic link. The standard library's urllib does the transfer: nothing to install.
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
from collections.abc import Sequence
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
#: The one host plain http is fetched from: the tests' stand-in servers.
LOOPBACK = "127.0.0.1"


class _Interrupted(Exception):
    """The connection ended before the announced length."""


@dataclass(frozen=True)
class Checksums:
    """What a file is checked against; either may be unknown (``None``)."""

    sha256: str | None = None
    md5: str | None = None  # Zenodo publishes md5 only

    def __bool__(self) -> bool:
        return bool(self.sha256 or self.md5)


_DEFAULT_PORTS = {"https": 443, "http": 80}


def host_allowed(url: str, hosts: Sequence[str]) -> bool:
    """The URL's host is one of ``hosts`` ("zenodo.org": that host on the scheme's default port;
    "127.0.0.1:8080": that port; ".zenodo.org": any subdomain)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    for allowed in hosts:
        name, _, allowed_port = allowed.lower().partition(":")
        wanted_port = int(allowed_port) if allowed_port else _DEFAULT_PORTS.get(parts.scheme)
        if port == wanted_port and (host == name or (name.startswith(".") and host.endswith(name))):
            return True
    return False


def url_host(url: str) -> str:
    """``host`` or ``host:port`` (a port other than the scheme's default), as ``hosts`` lists it."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port and parts.port != _DEFAULT_PORTS.get(parts.scheme) else host


def check_url(url: str, hosts: Sequence[str] | None = None) -> str:
    """https only (urllib also opens file://, ftp:// and plain http), on one of ``hosts`` when given.

    Plain http is accepted from 127.0.0.1 alone: the stand-in servers of the tests.
    """
    parts = urlsplit(url)
    if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname == LOOPBACK)):
        raise UserError(f"Refusing to download {url!r}: only https addresses are fetched")
    if hosts is not None and not host_allowed(url, hosts):
        raise UserError(f"Refusing to download from {url_host(url)!r}: not one of the source's hosts "
                        f"({', '.join(hosts)})")
    return url


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https and to one of the source's hosts: each hop is checked, not only the
    first address."""

    def __init__(self, hosts: Sequence[str]) -> None:
        super().__init__()
        self.hosts = tuple(hosts)

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's signature
        check_url(newurl, self.hosts)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url: str, headers: dict[str, str] | None = None, timeout_s: float = 60.0,
             hosts: Sequence[str] | None = None):
    """Open an https URL with Terrafuse's user agent; redirects stay on ``hosts`` (default: the URL's host)."""
    allowed = tuple(hosts) if hosts is not None else (url_host(url),)
    request = urllib.request.Request(check_url(url, allowed), headers={"User-Agent": USER_AGENT, **(headers or {})})
    opener = urllib.request.build_opener(_CheckedRedirects(allowed))
    # The scheme and host are checked by check_url just above, and on every redirect by _CheckedRedirects.
    return opener.open(request, timeout=timeout_s)  # nosec B310


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


def _open_part(part: Path, append: bool):
    """The part file for writing, created if missing, never through a symbolic link (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(part, flags, 0o644), "ab" if append else "wb")


def _part_size(part: Path) -> int:
    try:
        return part.lstat().st_size
    except FileNotFoundError:
        return 0


def _transfer(url: str, part: Path, size_b: int | None, progress: Progress | None, label: str,
              timeout_s: float, hosts: Sequence[str] | None) -> int | None:
    """One request for the bytes ``part`` lacks; returns the file's total size when the server said it."""
    offset = _part_size(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = open_url(url, headers, timeout_s, hosts)
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
        with _open_part(part, append=bool(offset)) as out:
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


def _remove_planted_link(part: Path) -> None:
    """A symbolic link where the part file goes was not written by Terrafuse: remove the link, never its target."""
    if part.is_symlink():
        log.warning("removing the symbolic link %s (a part file is never written through a link)", part)
        part.unlink()


def _fetch(url: str, part: Path, size_b: int | None, progress: Progress | None, label: str, timeout_s: float,
           hosts: Sequence[str] | None, retries: int, retry_wait_s: float) -> None:
    """Transfer until ``part`` is complete, resuming after each dropped connection."""
    failures = 0
    while True:
        try:
            _transfer(url, part, size_b, progress, label, timeout_s, hosts)
            return
        except (_Interrupted, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            failures += 1
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if failures > retries:
                kept = f"; {_part_size(part) // 10**6} MB are kept in {part.name}" if part.exists() else ""
                raise UserError(f"Downloading {label} was interrupted ({reason}){kept}: run the download again "
                                "to resume") from None
            log.warning("%s: %s; resuming (try %d of %d)", label, reason, failures, retries)
            time.sleep(retry_wait_s * failures)


def _mismatch(checksums: Checksums, sha256: str, md5: str) -> tuple[str, str, str] | None:
    for kind, expected, actual in (("sha256", checksums.sha256, sha256), ("md5", checksums.md5, md5)):
        if expected and expected.lower() != actual:
            return kind, expected, actual
    return None


def download_file(url: str, target: Path, *, checksums: Checksums = Checksums(), size_b: int | None = None,
                  progress: Progress | None = None, retries: int = 5, retry_wait_s: float = 2.0,
                  timeout_s: float = 60.0, label: str | None = None, hosts: Sequence[str] | None = None,
                  unverified: bool = False) -> str:
    """Download ``url`` to ``target`` through ``target.part``, resuming; returns the file's sha256.

    The whole file is checked against ``checksums`` before it becomes ``target``. Without any checksum the
    download is refused unless ``unverified`` (then a part file left by an earlier run is not trusted either:
    the file is fetched from its start). A dropped connection is retried ``retries`` times, each asking only
    for the missing bytes; when they are spent the part file stays for the next run. A resumed file that does
    not match is fetched once more from the start (the earlier bytes may be junk); a fresh one that does not
    match is removed and :class:`UserError` raised. ``hosts``: where the URL and its redirects may lead
    (default: the URL's own host).
    """
    target = Path(target)
    label = label or target.name
    if not checksums and not unverified:
        raise UserError(f"No checksum is known for {label}, so its download cannot be verified; it was not "
                        "downloaded (accept an unverified file explicitly to fetch it anyway)")
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_planted_link(part)
    if unverified and part.exists():
        part.unlink()  # nothing can tell earlier bytes from junk
    resumed = _part_size(part) > 0
    while True:
        _fetch(url, part, size_b, progress, label, timeout_s, hosts, retries, retry_wait_s)
        sha256, md5 = _hashes(part)
        wrong = _mismatch(checksums, sha256, md5)
        if wrong is None:
            break
        part.unlink()
        if resumed:
            log.warning("%s: the resumed file does not match its %s; downloading it again from the start",
                        label, wrong[0])
            resumed = False
            continue
        kind, expected, actual = wrong
        raise UserError(f"{label} does not match its published {kind} (expected {expected}, got {actual}): "
                        "the download was removed; try again, or the file on the server has changed")
    os.replace(part, target)
    log.info("downloaded %s (%d MB, sha256 %s)%s", target, target.stat().st_size // 10**6, sha256[:12],
             " UNVERIFIED: no checksum was known" if not checksums else "")
    return sha256
