"""The model manager job: ``python -m backend models list|info|download|verify|import``.

One job for the dock and the command line. ``list`` never touches the network (it is what the dock shows
before anything else); ``info`` reads a remote record for the size and licence of what a download would
fetch; ``download`` fetches with progress and resume, verifies against what the catalogue pins, extracts,
and only then records the install (a model that pins nothing needs ``unverified``, and its record says
so); ``verify`` re-hashes what is installed; ``import`` takes a local folder or archive (offline use, or a
file fetched elsewhere) and, for SkySense, runs the converter.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..hub.catalogue import (
    BUNDLED_MODELS_DIR,
    CATALOGUE,
    ModelEntry,
    bundled_folder,
    fetched_bundled_folder,
    get_entry,
    installed_location,
    missing_files,
    read_manifest,
    record_installed,
    release_hosts,
    release_url,
)
from ..hub.checksums import file_sha256
from ..hub.download import Checksums, download_file
from ..hub.paths import models_dir
from ..progress import Progress

log = logging.getLogger("terrafuse.hub")

ACTIONS = ("list", "info", "download", "verify", "import")
BUNDLED_CHECKSUMS = "checksums.sha256"
#: The official SkySense files and the part of the converter each one fills.
SKYSENSE_PARTS = {
    "hr": "skysense_model_backbone_hr.pth", "s2": "skysense_model_backbone_s2.pth",
    "s1": "skysense_model_backbone_s1.pth", "head_s2": "skysense_model_head_s2.pth",
    "head_s1": "skysense_model_head_s1.pth", "fusion": "skysense_model_fusion.pth",
}
_HEX64 = frozenset("0123456789abcdef")



def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(folder: Path, progress: Progress | None = None) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (hash records of Terrafuse left out)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("terrafuse_"))
    result = {}
    for i, path in enumerate(files):
        if progress is not None:
            progress.update(i, len(files), f"hashing {path.name}")
        result[path.relative_to(folder).as_posix()] = file_sha256(path)
    return result


def write_checksums(folder: Path) -> Path:
    """``checksums.sha256`` in sha256sum's format ("<sha256>  <path>"), for every file but itself."""
    lines = [f"{sha}  {name}" for name, sha in tree_sha256(folder).items() if name != BUNDLED_CHECKSUMS]
    path = folder / BUNDLED_CHECKSUMS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_checksums(path: Path) -> dict[str, str]:
    expected = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            sha, name = line.split(maxsplit=1)
            expected[name.strip()] = sha
    return expected


def _size_mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 1e6, 1)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1)


def _offline(offline: bool) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache(entry: ModelEntry) -> Path | None:
    """The snapshot of a hub model in huggingface-hub's cache, without any network request."""
    from ..hub.huggingface import fetch_snapshot

    try:
        return fetch_snapshot(entry.source, allow_patterns=entry.allow_patterns, offline=True)
    except UserError:
        return None


def locate(entry: ModelEntry, root: Path) -> Path | None:
    """Where ``entry`` is installed: bundled folder, manifest record, archive in the models folder, hub cache."""
    if entry.kind == "bundled":
        folder = bundled_folder(entry, root)
        marker = folder / ("config.json" if entry.role == "skysense" else "unet")
        return folder if marker.exists() and not missing_files(entry, root) else None
    found = installed_location(entry.name, root)
    if found is not None:
        return found
    if entry.kind == "zip" and (root / entry.filename).is_file():
        return root / entry.filename
    if entry.kind == "hub":
        return _hub_cache(entry)
    return None


def describe(entry: ModelEntry, root: Path) -> dict[str, Any]:
    """What the dock shows for one model: name, source, size_mb, licence, installed, path and the rest."""
    path = locate(entry, root)
    data = entry.to_json()
    data.update({"installed": path is not None, "path": str(path) if path else None,
                 "source_kind": entry.kind,
                 "size_mb": _size_mb(path) if path is not None and entry.kind != "hub" else entry.size_mb})
    if entry.kind == "bundled" and path is None:
        data["missing_files"] = missing_files(entry, root)
        data["size_mb"] = round(sum(size for _, _, size in entry.release_files) / 1e6, 1)
    record = read_manifest(root).get(entry.name) or {}
    for key in ("sha256", "md5", "installed_by"):
        if record.get(key):
            data[f"installed_{key}" if key != "installed_by" else key] = record[key]
    return data


# Actions ---------------------------------------------------------------------------------------------------

def action_list(root: Path) -> dict[str, Any]:
    return {"models_dir": str(root), "models": [describe(entry, root) for entry in CATALOGUE.values()]}


def action_info(entry: ModelEntry, root: Path, offline: bool) -> dict[str, Any]:
    data = describe(entry, root)
    if entry.kind == "zip" and not _offline(offline):
        from ..hub.zenodo import record_file

        remote = record_file(entry.source, key=entry.zenodo_key)
        data.update({"size_mb": round(remote.size_b / 1e6, 1), "published_md5": remote.md5,
                     "download_url": remote.url, "zenodo_file": remote.key,
                     "licence": remote.licence or entry.licence})
    return data


def action_download(entry: ModelEntry, root: Path, target_dir: Path, progress: Progress,
                    offline: bool, unverified: bool = False) -> dict[str, Any]:
    if entry.kind == "bundled":
        if not missing_files(entry, root):
            return {**describe(entry, root), "message": f"{entry.name} ships with Terrafuse: nothing to download"}
        return _download_bundled(entry, root, progress, offline)
    if entry.kind == "manual":
        raise UserError(f"{entry.title} cannot be downloaded by Terrafuse: {entry.notes} (source: {entry.url})")
    if _offline(offline):
        raise UserError(f"Offline: {entry.name} cannot be downloaded. Fetch it on a connected machine and use "
                        f"'models import {entry.name} --path FILE_OR_FOLDER'")
    if not entry.pinned and not unverified:
        raise UserError(f"{entry.name} has no pinned checksum in Terrafuse's catalogue, so its download cannot be "
                        f"verified and was not started. Download it only if you trust {entry.url}: "
                        f"'models download --name {entry.name} --unverified' (its record says unverified)")
    if entry.kind == "zip":
        return _download_zip(entry, root, target_dir, progress, unverified)
    return _download_hub(entry, root, target_dir, progress, unverified)


def _download_bundled(entry: ModelEntry, root: Path, progress: Progress, offline: bool) -> dict[str, Any]:
    """Complete a bundled model whose weights the plugin zip left out: the plugin's small files plus the
    weights from the project's release assets, each verified against the sha256 the catalogue pins, put in
    place as one folder."""
    from ..atomic_files import write_folder

    missing = missing_files(entry, root)
    size_mb = round(sum(size for path, _, size in entry.release_files if path in missing) / 1e6, 1)
    if _offline(offline):
        raise UserError(f"Offline: the weights of the bundled model {entry.name} ({size_mb} MB) are not in this "
                        "installation (the plugin package leaves them out) and cannot be downloaded now. Connect "
                        f"once and download {entry.name} in the model manager, or use a checkout of Terrafuse")
    own = BUNDLED_MODELS_DIR / entry.source
    target_dir = fetched_bundled_folder(entry, root)
    downloads = target_dir.parent / f".{entry.source}.downloads"

    def fill(folder: Path) -> None:
        shutil.copytree(own, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("terrafuse_*"))
        for i, (relpath, sha256, size_b) in enumerate(entry.release_files):
            done = folder / relpath
            if done.is_file() and file_sha256(done) == sha256:
                continue
            progress.update(i, len(entry.release_files), f"downloading {entry.name}: {relpath}")
            # Kept beside the target between runs, so that an interrupted download resumes.
            part_target = downloads / relpath.replace("/", "--")
            download_file(release_url(entry, relpath), part_target, checksums=Checksums(sha256=sha256),
                          size_b=size_b, progress=progress, label=f"{entry.name} {relpath}",
                          hosts=release_hosts(entry))
            done.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part_target, done)

    write_folder(target_dir, fill)
    shutil.rmtree(downloads, ignore_errors=True)
    problems = missing_files(entry, root)
    if problems:
        raise UserError(f"{entry.name} is still incomplete after the download: {', '.join(problems)}")
    return {**describe(entry, root), "message": f"downloaded and verified the weights of {entry.name} "
            f"({size_mb} MB)", "path": str(target_dir)}


def _verified_against(entry: ModelEntry) -> list[str]:
    checks = [f"{kind} (catalogue)" for kind, value in (("sha256", entry.sha256), ("md5", entry.md5)) if value]
    if entry.kind == "hub" and entry.revision:
        checks.append(f"revision {entry.revision} (catalogue): each file's sha256 from its listing")
    return checks


def _download_zip(entry: ModelEntry, root: Path, target_dir: Path, progress: Progress,
                  unverified: bool) -> dict[str, Any]:
    from ..hub.archives import extract_zip
    from ..hub.zenodo import record_file, zenodo_hosts
    from ..models.diffusion.layout import find_layout

    hosts = zenodo_hosts(entry.hosts)
    remote = record_file(entry.source, key=entry.zenodo_key, hosts=hosts)
    for what, pinned, published in (("md5", entry.md5, remote.md5), ("size", entry.size_b, remote.size_b)):
        if pinned and published and pinned != published:
            raise UserError(f"The Zenodo record of {entry.name} now publishes another {what} ({published}) than "
                            f"Terrafuse's catalogue pins ({pinned}): the file changed; nothing was downloaded")
    checks = Checksums(sha256=entry.sha256, md5=entry.md5)
    # Unverified: the reply's md5 still catches a transfer gone wrong, though it proves nothing about the source.
    sha256 = download_file(remote.url, target_dir / entry.filename,
                           checksums=checks if checks else Checksums(md5=remote.md5),
                           size_b=entry.size_b or remote.size_b or None, progress=progress, label=entry.filename,
                           hosts=hosts, unverified=not checks)
    target = target_dir / entry.filename
    progress.update(0, 1, f"extracting {entry.filename}")
    try:
        extracted = extract_zip(target)  # refuses unsafe or corrupt archives
        find_layout(extracted)  # and anything that is not a diffusers model
    except UserError:
        target.unlink()  # verified bytes that are no model: nothing is installed
        raise
    record_installed(entry.name, {"path": str(target), "sha256": sha256, "md5": entry.md5 or remote.md5,
                                  "source_url": remote.url, "licence": remote.licence or entry.licence,
                                  "installed_by": "download", "verified_against": _verified_against(entry),
                                  "unverified": not checks}, root)
    message = "downloaded, verified and extracted" if checks else "downloaded UNVERIFIED (no checksum pinned)"
    return {**describe(entry, root), "extracted": str(extracted), "message": message, "unverified": not checks}


def _download_hub(entry: ModelEntry, root: Path, target_dir: Path, progress: Progress,
                  unverified: bool) -> dict[str, Any]:
    from ..hub.huggingface import fetch_snapshot

    cache = target_dir / "huggingface" if target_dir != models_dir() else None
    folder = fetch_snapshot(entry.source, revision=entry.revision, allow_patterns=entry.allow_patterns,
                            ignore_patterns=("*.fp16.*",), offline=False, cache_dir=cache, progress=progress)
    checked, problems = _verify_hub_snapshot(folder)
    if problems or not checked:
        raise UserError(f"{entry.name} was downloaded but does not verify: "
                        + ("; ".join(problems[:5]) or "no file carries a sha256") + "; it is not installed")
    if entry.revision and folder.name != entry.revision:
        raise UserError(f"The hub answered revision {folder.name} for {entry.name}, not the pinned {entry.revision}")
    record_installed(entry.name, {"path": str(folder), "revision": folder.name, "installed_by": "download",
                                  "licence": entry.licence, "verified_against": _verified_against(entry),
                                  "unverified": not entry.revision, "files_checked": checked}, root)
    message = (f"downloaded at the pinned revision; {checked} files verified" if entry.revision
               else f"downloaded UNVERIFIED (no revision pinned; {checked} files match the hub's listing)")
    return {**describe(entry, root), "message": message, "unverified": not entry.revision}


def _verify_hub_snapshot(folder: Path) -> tuple[int, list[str]]:
    """huggingface-hub stores large (LFS) files as blobs named by their sha256: re-hash and compare."""
    checked, problems = 0, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = path.resolve().name
        if len(blob) == 64 and set(blob) <= _HEX64:
            checked += 1
            if file_sha256(path) != blob:
                problems.append(f"{path.relative_to(folder)} does not match its sha256")
    return checked, problems


def action_verify(entry: ModelEntry, root: Path, progress: Progress) -> dict[str, Any]:
    path = locate(entry, root)
    if path is None:
        raise UserError(f"{entry.name} is not installed; nothing to verify")
    record = read_manifest(root).get(entry.name) or {}
    problems: list[str] = []
    if entry.kind == "bundled":
        expected = read_checksums(path / BUNDLED_CHECKSUMS)
        actual = tree_sha256(path, progress)
        problems = [f"{name}: {'missing' if name not in actual else 'changed'}" for name, sha in expected.items()
                    if actual.get(name) != sha]
        checked = len(expected)
    elif path.is_file():
        actual_sha = file_sha256(path)
        checked = 1
        for where, sha in (("the catalogue", entry.sha256), ("the download or import", record.get("sha256"))):
            if sha and sha != actual_sha:
                problems.append(f"{path.name}: sha256 {actual_sha[:16]}... differs from {where}'s {sha[:16]}...")
        if entry.md5 and _md5(path) != entry.md5:
            problems.append(f"{path.name}: md5 differs from the catalogue's {entry.md5}")
        if not entry.sha256 and not record.get("sha256"):
            problems.append(f"{path.name}: no sha256 to compare with (it was put there by hand); import it")
    elif record.get("files"):
        actual = tree_sha256(path, progress)
        checked = len(record["files"])
        problems = [f"{name}: {'missing' if name not in actual else 'changed'}"
                    for name, sha in record["files"].items() if actual.get(name) != sha]
    else:
        checked, problems = _verify_hub_snapshot(path)
        if checked == 0:
            problems.append(f"{path}: no file with a known sha256")
    if problems:
        raise UserError(f"{entry.name} failed verification ({len(problems)} problems): " + "; ".join(problems[:5]))
    return {**describe(entry, root), "verified": True, "files_checked": checked,
            "unverified_source": bool(record.get("unverified"))}


def _import_skysense(entry: ModelEntry, source: Path, root: Path, progress: Progress) -> dict[str, Any]:
    if not source.is_dir():
        raise UserError(f"Point at the folder holding the SkySense files ({', '.join(entry.expected_files)})")
    parts = {part: source / name for part, name in SKYSENSE_PARTS.items() if (source / name).is_file()}
    if not parts:
        raise UserError(f"{source} holds none of the SkySense files ({', '.join(SKYSENSE_PARTS.values())})")
    from ..models.skysense.convert import convert_official

    progress.update(0, 2, f"converting {', '.join(sorted(parts))}")
    model, report = convert_official(parts)
    out = model.save_pretrained(root / entry.name)
    progress.update(1, 2, "hashing the converted weights")
    record_installed(entry.name, {"path": str(out), "files": tree_sha256(out), "installed_by": "import",
                                  "converted_from": {p: str(f) for p, f in parts.items()}}, root)
    return {**describe(entry, root), "converted_parts": sorted(parts), "not_filled": len(report.not_filled),
            "notes": report.notes}


def action_import(entry: ModelEntry, source: Path | None, root: Path, progress: Progress,
                  offline: bool) -> dict[str, Any]:
    if source is None:
        raise UserError("'models import' needs --path: the folder or archive to import")
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise UserError(f"Nothing to import at {source}")
    if entry.kind == "bundled":
        raise UserError(f"{entry.name} ships with Terrafuse; import another model")
    if entry.kind == "manual":
        return _import_skysense(entry, source, root, progress)
    if source.is_file():
        if source.suffix.lower() != ".zip":
            raise UserError(f"{source.name} is neither a folder nor a zip archive")
        return _import_zip(entry, source, root, progress, offline)
    from ..models.diffusion.layout import find_layout

    layout = find_layout(source)  # refuses anything that is not a diffusers model folder
    files = tree_sha256(layout.root, progress)
    record_installed(entry.name, {"path": str(layout.root), "files": files, "installed_by": "import"}, root)
    return {**describe(entry, root), "files_hashed": len(files), "message": "imported from a local folder"}


def _import_zip(entry: ModelEntry, source: Path, root: Path, progress: Progress, offline: bool) -> dict[str, Any]:
    from ..hub.archives import extract_zip

    progress.update(0, 2, f"hashing {source.name}")
    sha256, md5 = file_sha256(source), _md5(source)
    checked = []
    if entry.sha256:
        if sha256 != entry.sha256:
            raise UserError(f"{source.name} does not match {entry.name}'s sha256: another or a corrupt file")
        checked.append("sha256 (catalogue)")
    if entry.kind == "zip" and not _offline(offline):
        from ..hub.zenodo import record_file

        try:
            remote = record_file(entry.source, key=entry.zenodo_key, timeout_s=10)
        except UserError as exc:
            log.warning("%s; the archive's md5 is not checked", exc)
        else:
            if remote.md5 and remote.md5 != md5:
                raise UserError(f"{source.name} does not match the md5 Zenodo publishes for {entry.name}: "
                                "another or a corrupt file")
            checked.append("md5 (Zenodo)")
    progress.update(1, 2, f"extracting {source.name}")
    extracted = extract_zip(source)  # refuses unsafe or corrupt archives
    from ..models.diffusion.layout import find_layout

    find_layout(extracted)
    record_installed(entry.name, {"path": str(source), "sha256": sha256, "md5": md5, "installed_by": "import"}, root)
    return {**describe(entry, root), "checked_against": checked or ["nothing published (offline)"],
            "extracted": str(extracted)}


def run_models(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The ``models`` job."""
    action = params["action"]
    root = models_dir()
    target_dir = Path(params["folder"]).expanduser() if params.get("folder") else root
    offline = bool(params.get("offline"))
    if action == "list":
        return action_list(root)
    if not params.get("name"):
        raise UserError(f"'models {action}' needs --name, one of: {', '.join(CATALOGUE)}")
    entry = get_entry(params["name"])
    if action == "info":
        return action_info(entry, root, offline)
    if action == "download":
        return action_download(entry, root, target_dir, progress, offline, bool(params.get("unverified")))
    if action == "verify":
        return action_verify(entry, root, progress)
    return action_import(entry, Path(params["path"]) if params.get("path") else None, root, progress, offline)
