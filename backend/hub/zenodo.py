"""Zenodo records: the download address, size, md5 and licence of a model archive.

DiffusionSat's archives are published on Zenodo without a sha256; the record's API states each file's
size and md5, read just before a download so that the user sees the size first. The md5 the reply carries
is compared with the one the catalogue pins (a record that changed is refused); it is never the only
check. ``TERRAFUSE_ZENODO_URL`` points elsewhere (tests use a stand-in server on 127.0.0.1), and that
server's host is then the one the record and its files may come from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError
from .download import open_url, url_host

ZENODO_URL_ENV = "TERRAFUSE_ZENODO_URL"
ZENODO_URL = "https://zenodo.org"


def zenodo_url() -> str:
    return os.environ.get(ZENODO_URL_ENV, ZENODO_URL).rstrip("/")


def zenodo_hosts(pinned: Sequence[str]) -> tuple[str, ...]:
    """The hosts a record and its files may come from: the catalogue's, or the stand-in's when one is set."""
    if os.environ.get(ZENODO_URL_ENV):
        return (url_host(zenodo_url()),)
    return tuple(pinned)


@dataclass(frozen=True)
class ZenodoFile:
    record: str
    key: str
    size_b: int
    md5: str | None
    url: str
    licence: str | None


def record_file(record: str, *, suffix: str = ".zip", key: str | None = None, timeout_s: float = 30.0,
                hosts: Sequence[str] | None = None) -> ZenodoFile:
    """The file ``key`` of ``record`` (or its only file ending in ``suffix``), from ``/api/records/<id>``;
    the API and its redirects stay on ``hosts`` (default: Zenodo's)."""
    api = f"{zenodo_url()}/api/records/{record}"
    try:
        allowed = zenodo_hosts(hosts or ("zenodo.org",))
        with open_url(api, {"Accept": "application/json"}, timeout_s, hosts=allowed) as response:
            payload = json.load(response)
    except OSError as exc:
        raise UserError(f"Cannot read the Zenodo record {record} ({api}): {getattr(exc, 'reason', exc)}. "
                        "Offline? Download the archive elsewhere and use 'models import'") from None
    except ValueError:
        raise UserError(f"The Zenodo record {record} did not answer JSON ({api})") from None
    files = payload.get("files") or []
    if key is not None:
        chosen = [f for f in files if f.get("key") == key]
    else:
        chosen = [f for f in files if str(f.get("key", "")).endswith(suffix)]
    if len(chosen) != 1:
        names = ", ".join(str(f.get("key")) for f in files) or "no files"
        raise UserError(f"The Zenodo record {record} does not hold exactly one {key or '*' + suffix} "
                        f"(it holds {names})")
    entry = chosen[0]
    algorithm, _, digest = str(entry.get("checksum", "")).partition(":")
    licence = (payload.get("metadata") or {}).get("license")
    if isinstance(licence, dict):
        licence = licence.get("id") or licence.get("title")
    links = entry.get("links") or {}
    # Zenodo's records API names the bytes "content" (or "self" ending in /content); the public file
    # address is the fallback.
    url = links.get("content") or (links.get("self") if str(links.get("self", "")).endswith("/content") else None)
    url = url or f"{zenodo_url()}/records/{record}/files/{entry['key']}?download=1"
    return ZenodoFile(record=record, key=str(entry["key"]), size_b=int(entry.get("size", 0)) or 0,
                      md5=digest.lower() if algorithm == "md5" and digest else None, url=url,
                      licence=str(licence) if licence else None)
