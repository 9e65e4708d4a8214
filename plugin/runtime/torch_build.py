"""Which torch build fits the machine: the CUDA build its NVIDIA driver supports, else the CPU build.

PyTorch publishes one wheel index per CUDA version. The driver's banner names the newest CUDA it supports
(CUDA's minor-version compatibility makes every build up to that one work); GPUs older than Volta
(compute capability 7.0) are left out of the CUDA 12.8 and newer builds, so they get CUDA 12.6.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from .gpu import GpuReport

TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
#: The CUDA builds published for TORCH_VERSION, newest first: (tag, CUDA version).
CUDA_BUILDS: Tuple[Tuple[str, Tuple[int, int]], ...] = (("cu130", (13, 0)), ("cu128", (12, 8)), ("cu126", (12, 6)))
#: The oldest driver each build needs when the banner gives no CUDA version (Linux, Windows).
MIN_DRIVER = {"cu130": ((580, 65), (580, 88)), "cu128": ((570, 26), (570, 65)), "cu126": ((560, 28), (560, 76))}
PRE_VOLTA_LAST_BUILD = "cu126"


@dataclass(frozen=True)
class TorchBuild:
    """A torch build: its tag ("cu128", "cpu", "default"), where pip finds it, and why it was chosen."""

    tag: str
    index_url: Optional[str]
    reason: str

    @property
    def label(self) -> str:
        return {"cpu": "CPU", "default": "PyPI default"}.get(self.tag, f"CUDA {self.tag[2:-1]}.{self.tag[-1]}")


def build_for(tag: str, reason: str = "chosen by the user") -> TorchBuild:
    if tag == "default":
        return TorchBuild("default", None, reason)
    if tag != "cpu" and tag not in dict(CUDA_BUILDS):
        raise ValueError(f"unknown torch build {tag!r}")
    return TorchBuild(tag, PYTORCH_INDEX + tag, reason)


def choose_torch_build(report: Optional[GpuReport], platform: str = sys.platform) -> TorchBuild:
    """The build for this machine; see the module's docstring for the rules."""
    if platform == "darwin":
        return build_for("default", "macOS: PyPI's build uses the Apple GPU (MPS)")
    if report is None or not report.gpus:
        return build_for("cpu", "no NVIDIA GPU found (nvidia-smi)")
    oldest = min(gpu.compute_capability for gpu in report.gpus)
    candidates = [tag for tag, _ in CUDA_BUILDS]
    if oldest < (7, 0):
        candidates = candidates[candidates.index(PRE_VOLTA_LAST_BUILD):]
    for tag in candidates:
        if _driver_supports(report, tag, platform):
            why = f"{report.gpus[0].name}, driver {report.driver_version}"
            if report.cuda_version:
                why += f" supports CUDA {report.cuda_version[0]}.{report.cuda_version[1]}"
            if oldest < (7, 0):
                why += f"; compute capability {oldest[0]}.{oldest[1]} needs CUDA 12.6 or older"
            return build_for(tag, why)
    return build_for("cpu", f"driver {report.driver_version} is too old for CUDA 12.6; update the NVIDIA driver "
                            "to use the GPU")


def _driver_supports(report: GpuReport, tag: str, platform: str) -> bool:
    needed = dict(CUDA_BUILDS)[tag]
    if report.cuda_version is not None:
        return report.cuda_version >= needed
    linux_min, windows_min = MIN_DRIVER[tag]
    minimum = windows_min if platform == "win32" else linux_min
    return report.driver_tuple[:2] >= minimum
