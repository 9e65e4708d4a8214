"""The diagnostics report: one copyable text with what a bug report needs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .gpu import GpuReport

CHECKSUM_CACHE = ".terrafuse-sha256.json"
CHUNK_B = 8 * 2**20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_B), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_folder_listing(folder: Optional[Path]) -> List[Dict[str, Any]]:
    """Every file under the model folder with its size and sha256.

    Checksums are cached in the folder by (size, modification time): model files are gigabytes, and
    the report must stay quick the second time.
    """
    if folder is None or not folder.is_dir():
        return []
    cache_path = folder / CHECKSUM_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    listing = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_CACHE):
        relative = path.relative_to(folder).as_posix()
        stat = path.stat()
        key = f"{stat.st_size}:{int(stat.st_mtime)}"
        entry = cache.get(relative)
        if not entry or entry.get("key") != key:
            entry = {"key": key, "sha256": sha256_file(path)}
            cache[relative] = entry
        listing.append({"path": relative, "size_b": stat.st_size, "sha256": entry["sha256"]})
    with contextlib.suppress(OSError):  # a read-only folder still gets its report, without the cache
        cache_path.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    return listing


def _section(title: str, lines: Iterable[str]) -> List[str]:
    return [f"## {title}", *lines, ""]


def build_report(
    qgis_version: str,
    python_path: str,
    gpu: Optional[GpuReport],
    backend: Optional[Dict[str, Any]],
    backend_error: Optional[str],
    models: List[Dict[str, Any]],
    models_dir: Optional[str],
    worker_errors: List[str],
) -> str:
    """Plain text (Markdown-ish) so it pastes well into an issue."""
    lines = ["# Terrafuse diagnostics", ""]
    lines += _section("System", [
        f"OS: {platform.platform()}",
        f"QGIS: {qgis_version}",
        f"QGIS's Python: {sys.version.split()[0]} ({sys.executable})",
    ])
    lines += _section("GPU (nvidia-smi)", [gpu.summary()] if gpu else ["no NVIDIA GPU found"])
    backend_lines = [f"Interpreter: {python_path}"]
    if backend:
        backend_lines.append(f"Python: {backend.get('python')}")
        backend_lines.append(f"torch: {backend.get('torch')}, CUDA build: {backend.get('cuda_build') or 'none (CPU)'}"
                             f", CUDA available: {backend.get('cuda_available')}")
        backend_lines.append(f"Device: {backend.get('device')}")
        for device in backend.get("devices", []):
            backend_lines.append("  " + ", ".join(f"{k}={v}" for k, v in device.items()))
        for name, version in backend.get("packages", {}).items():
            backend_lines.append(f"  {name}: {version or 'not installed'}")
        gpu_check = backend.get("gpu_check")
        if gpu_check:
            backend_lines.append(f"GPU check: {gpu_check.get('status')}: {gpu_check.get('message')}")
        for name, figure in backend.get("benchmarks", {}).items():
            backend_lines.append(f"  {name}: {figure}")
    if backend_error:
        backend_lines.append(f"Backend error: {backend_error}")
    lines += _section("Backend", backend_lines)
    model_lines = [f"Folder: {models_dir or 'not set'}"]
    model_lines += [f"  {m['path']}  {m['size_b']:,} B  sha256 {m['sha256']}" for m in models] or ["  (empty)"]
    lines += _section("Models", model_lines)
    lines += _section("Last worker errors", worker_errors[-20:] or ["none"])
    return "\n".join(lines).rstrip() + "\n"


def default_models_dir(profile_dir: str) -> str:
    return os.path.join(profile_dir, "terrafuse", "models")
