"""Files and folders written whole or not at all, under temporary names nobody can plant in advance.

Each is first written under a name that ``tempfile`` creates exclusively (O_EXCL, random, in the destination's
folder so that the final rename stays on one file system), then renamed into place. A file or symbolic link
left at a predictable name is never opened, followed or removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Permissions of what is renamed into place (tempfile creates 0600 files and 0700 folders).
FILE_MODE = 0o644
FOLDER_MODE = 0o755


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path``: a complete file or the previous one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(partial, FILE_MODE)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``. An existing ``target`` is first moved into a fresh
    temporary folder and removed only once ``new`` is in place (put back if that fails)."""
    graveyard = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old = graveyard / target.name
    try:
        if target.exists() or target.is_symlink():
            target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            if old.exists() or old.is_symlink():
                old.rename(target)
            raise
    finally:
        shutil.rmtree(graveyard, ignore_errors=True)


def write_folder(target: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """``fill`` a fresh temporary folder beside ``target``, then put it at ``target`` (see :func:`replace_folder`).

    The caller decides beforehand whether an existing ``target`` may be replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        fill(partial)
        os.chmod(partial, FOLDER_MODE)
        replace_folder(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
