"""The ``info`` job: what the backend runs on (Python, torch, CUDA, devices and free memory)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from ..progress import Progress

_PACKAGES = ("torch", "torchvision", "diffusers", "timm", "safetensors", "huggingface-hub", "rasterio",
             "pyogrio", "numpy")


def package_version(name: str) -> str:
    """The installed version of a distribution, or "" when it is not installed (what provenance records)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows: for the figures
    the benchmarks and the training scripts record."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_device() -> dict[str, Any]:
    memory_b = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    available_b = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "total_memory_mb": memory_b // 2**20 if memory_b else None,
        "free_memory_mb": available_b // 2**20 if available_b else None,
    }


def torch_devices() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Torch's build and the accelerators it can use; empty when torch is missing."""
    try:
        import torch
    except ImportError as exc:
        return {"torch": None, "error": f"torch cannot be imported: {exc}"}, []
    build = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    devices: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free_b, total_b = torch.cuda.mem_get_info(index)
            devices.append({
                "type": "cuda",
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "total_memory_mb": total_b // 2**20,
                "free_memory_mb": free_b // 2**20,
                "bf16": torch.cuda.is_bf16_supported(),
            })
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"type": "mps", "index": 0, "name": "Apple GPU (MPS)"})
    return build, devices


def preferred_device(devices: list[dict[str, Any]]) -> str:
    """The device jobs will use: the first CUDA device, else MPS, else the CPU."""
    for device in devices:
        if device["type"] == "cuda":
            return f"cuda:{device['index']}"
    return "mps" if any(d["type"] == "mps" for d in devices) else "cpu"


def device_line() -> str:
    """One line naming the device jobs will use: the GPU's name and memory, else the CPU's cores (what the
    worker puts in every job's first event)."""
    build, accelerators = torch_devices()
    chosen = preferred_device(accelerators)
    for device in accelerators:
        if device["type"] == "cuda" and chosen == f"cuda:{device['index']}":
            return f"GPU: {device['name']} ({device['total_memory_mb'] / 1024:.0f} GiB)"
    if chosen == "mps":
        return "GPU: Apple (MPS)"
    threads = build.get("threads")
    return f"CPU: {os.cpu_count()} cores" + (f", {threads} torch threads" if threads else "")


def run_info(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress.update(0, 1, "reading versions and devices")
    build, accelerators = torch_devices()
    devices = accelerators + [cpu_device()]
    progress.update(1, 1, "done")
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        **build,
        "devices": devices,
        "device": preferred_device(devices),
    }
