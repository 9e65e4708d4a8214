"""What NVIDIA GPUs the machine has, read from ``nvidia-smi`` (no torch needed)."""

from __future__ import annotations

import re
import shutil
import subprocess  # nosec B404
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

QUERY = "--query-gpu=name,driver_version,memory.total,compute_cap"
Runner = Callable[[List[str]], str]


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int
    compute_capability: Tuple[int, int]


@dataclass(frozen=True)
class GpuReport:
    """The GPUs and the driver; ``cuda_version`` is the newest CUDA the driver supports."""

    driver_version: str
    cuda_version: Optional[Tuple[int, int]]
    gpus: List[Gpu] = field(default_factory=list)

    @property
    def driver_tuple(self) -> Tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", self.driver_version))

    def summary(self) -> str:
        cuda = f"CUDA {self.cuda_version[0]}.{self.cuda_version[1]}" if self.cuda_version else "CUDA unknown"
        names = ", ".join(f"{g.name} ({g.memory_mb / 1024:.0f} GiB)" for g in self.gpus)
        return f"{names}; driver {self.driver_version} ({cuda})"


def parse_query(text: str) -> Tuple[str, List[Gpu]]:
    """Parse ``nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader``."""
    gpus: List[Gpu] = []
    driver = ""
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            continue
        name, driver, memory, capability = parts[:4]
        memory_mb = int(re.sub(r"[^0-9]", "", memory) or 0)
        major, _, minor = capability.partition(".")
        gpus.append(Gpu(name, memory_mb, (int(major or 0), int(minor or 0))))
    return driver, gpus


def parse_cuda_version(text: str) -> Optional[Tuple[int, int]]:
    """The "CUDA Version: 12.4" of ``nvidia-smi``'s banner."""
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _run(args: List[str]) -> str:
    # nvidia-smi from PATH, an argument list, no shell.
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=True).stdout  # nosec B603


def query_gpus(runner: Optional[Runner] = None) -> Optional[GpuReport]:
    """The machine's NVIDIA GPUs, or ``None`` when there is no nvidia-smi or it finds none."""
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            return None
        runner = _run
    try:
        driver, gpus = parse_query(runner(["nvidia-smi", QUERY, "--format=csv,noheader"]))
        banner = runner(["nvidia-smi"])
    except (OSError, subprocess.SubprocessError):
        return None
    if not gpus:
        return None
    return GpuReport(driver, parse_cuda_version(banner), gpus)
