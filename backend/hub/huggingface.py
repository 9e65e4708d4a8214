"""Hugging Face hub repositories, through huggingface-hub's own cache (``snapshot_download``).

Offline (``HF_HUB_OFFLINE`` set, or ``offline=True``) only the local cache is read. The endpoint and the
cache folder follow huggingface-hub's settings (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger("terrafuse.hub")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = {"1", "true", "yes", "on"}


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` as the hub spells repository ids."""
    return bool(_REPO_ID.match(text)) and ".." not in text


def offline_requested(offline: bool | None = None) -> bool:
    """An explicit flag wins; otherwise ``HF_HUB_OFFLINE`` (read now, not at import time)."""
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def progress_tqdm(progress: Progress, label: str) -> type:
    """A tqdm class that forwards huggingface-hub's byte counts to ``progress`` (MB done of MB known).

    snapshot_download makes several bars from the class; only the one counting written bytes ("Reconstructing")
    is forwarded, so the dock shows one bar. Bars are never drawn (``disable``).
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    class ProgressTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._forward = str(kwargs.get("desc", "")).startswith("Reconstruct")
            self._done_b = 0

        def update(self, n: float | None = 1) -> bool | None:
            self._done_b += int(n or 0)
            if self._forward:
                total_mb = max(int(self.total or 0) // 10**6, self._done_b // 10**6, 1)
                progress.update(self._done_b // 10**6, total_mb, f"{label}: {self._done_b // 10**6} of "
                                f"{total_mb} MB")
            return None

    return ProgressTqdm


def fetch_snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    offline: bool | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download (or find in the cache) the files of ``repo_id`` that match the patterns; return the folder.

    ``cache_dir`` replaces huggingface-hub's cache (a models folder the user chose); ``progress`` gets the
    bytes written.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_only = offline_requested(offline)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
            local_files_only=local_only,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            tqdm_class=progress_tqdm(progress, repo_id) if progress is not None else None,
        )
    except LocalEntryNotFoundError:
        if local_only:
            raise UserError(
                f"The model {where} is not in the local Hugging Face cache and offline mode is on; "
                "run once with network access (or unset HF_HUB_OFFLINE) to download it"
            ) from None
        raise UserError(f"The model {where} cannot be downloaded (no connection to the hub?) "
                        "and is not in the local cache") from None
    except GatedRepoError:
        raise UserError(f"The model {where} is gated: accept its licence on the hub and log in "
                        "(huggingface-cli login)") from None
    except RepositoryNotFoundError:
        raise UserError(f"No model repository {repo_id} on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise UserError(f"The model repository {repo_id} has no revision {revision!r}") from None
    except EntryNotFoundError as exc:
        raise UserError(f"A file of {where} is missing on the hub: {exc}") from None
    except HfHubHTTPError as exc:
        raise UserError(f"Downloading {where} failed: {exc}") from None
    log.info("model %s resolved to %s%s", where, folder, " (offline cache)" if local_only else "")
    return Path(folder)


def list_repo_files(repo_id: str, *, revision: str | None = None) -> list[str]:
    """The file names of ``repo_id`` on the hub (no download); a UserError when the hub cannot say."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return list(HfApi().list_repo_files(repo_id, revision=revision))
    except RepositoryNotFoundError:
        raise UserError(f"No model repository {repo_id} on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise UserError(f"The model repository {repo_id} has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"Listing the files of {where} failed (no connection to the hub?): {exc}") from None
