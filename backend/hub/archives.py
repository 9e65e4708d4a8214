"""Model archives (zip files such as DiffusionSat's on Zenodo): extracted once into Terrafuse's cache."""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..atomic_files import replace_folder
from ..errors import UserError
from .checksums import files_sha256
from .paths import cache_dir

log = logging.getLogger("terrafuse.hub")

_DONE_MARKER = ".terrafuse_extracted"


def _safe_members(archive: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts:
            raise UserError(f"The archive {zip_path.name} holds an unsafe path ({info.filename}); it was not extracted")
        members.append(info)
    return members


def extract_zip(zip_path: Path) -> Path:
    """Extract ``zip_path`` into ``<cache>/extracted/<sha256 prefix>`` (once) and return that folder.

    Extraction goes to a temporary folder that is renamed when complete, so an interrupted run never
    leaves a half-extracted model behind.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise UserError(f"Model archive not found: {zip_path}")
    # The zip's own hash names the folder; its record sits in the cache, never next to the user's file.
    key = files_sha256(zip_path.parent, [zip_path.name], record_in_folder=False)[:16]
    target = cache_dir() / "extracted" / key
    if (target / _DONE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=target.parent))  # exclusive, unpredictable
    log.info("extracting %s into %s", zip_path, target)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp, members=_safe_members(archive, zip_path))
    except zipfile.BadZipFile as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"The model archive {zip_path.name} is corrupt or truncated ({exc})") from None
    (tmp / _DONE_MARKER).write_text(str(zip_path), encoding="utf-8")
    replace_folder(tmp, target)  # a half-extracted folder of an earlier run is replaced
    return target
