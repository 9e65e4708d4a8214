"""The self-test: device and speed, and never a silent fall-back to the CPU when a GPU is present."""

from __future__ import annotations

from pathlib import Path

from backend.jobs.selftest import diagnose_gpu
from backend.progress import Progress
from backend.worker import run_job

DATA = Path(__file__).resolve().parent.parent / "runtime" / "data"


def test_no_gpu_is_said_plainly() -> None:
    assert diagnose_gpu(None, False, None)["status"] == "no_gpu"


def test_a_usable_gpu() -> None:
    banner = (DATA / "nvidia-smi-h100.txt").read_text()
    check = diagnose_gpu(banner, True, "12.8")
    assert check["status"] == "ok"
    assert "driver 570.133.20" in check["message"]


def test_a_gpu_with_a_cpu_only_torch() -> None:
    banner = (DATA / "nvidia-smi-h100.txt").read_text()
    check = diagnose_gpu(banner, False, None)
    assert check["status"] == "gpu_unusable"
    assert "CPU-only build" in check["message"]
    assert "Set up backend" in check["message"]


def test_a_gpu_with_a_driver_too_old_for_torch() -> None:
    banner = (DATA / "nvidia-smi-old-driver.txt").read_text()
    check = diagnose_gpu(banner, False, "12.8")
    assert check["status"] == "gpu_unusable"
    assert "driver 470.256.02 supports CUDA up to 11.4" in check["message"]
    assert "Install a newer NVIDIA driver" in check["message"]


def test_the_selftest_runs_on_this_machine() -> None:
    result = run_job("selftest", {"matrix_n": 128, "batch": 1}, Progress())
    assert result["device"] in ("cpu", "mps") or result["device"].startswith("cuda")
    assert result["speed"]["matmul_gflops"] > 0
    assert result["speed"]["resnet18_images_per_s"] > 0
    assert result["gpu_check"]["status"] in ("no_gpu", "ok", "gpu_unusable")
    assert set(result["benchmarks"]) == {"matrix product (fp32)", "resnet18 forward (fp32, 224 px)"}
