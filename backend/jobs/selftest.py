"""The ``selftest`` job: the device the backend will use, its speed, and a plain word when a GPU is
present but torch cannot use it (never a silent fall-back to the CPU)."""

from __future__ import annotations

import re
import shutil
import subprocess  # nosec B404
import time
from typing import Any

from ..progress import Progress
from .info import run_info


def nvidia_smi_banner() -> str | None:
    """``nvidia-smi``'s output, or None when the machine has no NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        # nvidia-smi from PATH, no shell.
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=True).stdout  # nosec
    except (OSError, subprocess.SubprocessError):
        return None


def diagnose_gpu(banner: str | None, cuda_available: bool, torch_cuda: str | None) -> dict[str, str]:
    """Whether the GPU the driver sees is usable by this torch, and if not, the likely cause."""
    if banner is None or ("NVIDIA-SMI" not in banner and "Driver Version" not in banner):
        return {"status": "no_gpu", "message": "No NVIDIA GPU found: the models run on the CPU."}
    driver = re.search(r"Driver Version:\s*([\d.]+)", banner)
    driver_cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    driver_text = f"driver {driver.group(1)}" if driver else "the driver"
    if cuda_available:
        return {"status": "ok", "message": f"GPU in use ({driver_text}, torch built for CUDA {torch_cuda})."}
    if torch_cuda is None:
        return {"status": "gpu_unusable",
                "message": ("A GPU is present but torch is a CPU-only build, so the models would run on the CPU. "
                            "Set up the backend again with a CUDA build (Terrafuse settings > Set up backend).")}
    supported = f"supports CUDA up to {driver_cuda.group(1)}" if driver_cuda else "may be too old"
    return {"status": "gpu_unusable",
            "message": (f"A GPU is present but torch (built for CUDA {torch_cuda}) cannot use it: {driver_text} "
                        f"{supported}. Install a newer NVIDIA driver, or pick an older CUDA build in Set up backend.")}


def _time(fn, repeats: int, synchronize) -> float:
    fn()  # warm-up: kernels chosen, memory allocated
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


def run_selftest(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    import timm
    import torch

    progress.update(0, 3, "reading versions and devices")
    info = run_info({}, Progress())
    gpu_check = diagnose_gpu(nvidia_smi_banner(), torch.cuda.is_available(), torch.version.cuda)
    device = torch.device(info["device"])
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    progress.update(1, 3, f"matrix product on {device}")
    n = params["matrix_n"]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    with torch.inference_mode():
        matmul_s = _time(lambda: a @ b, 5, synchronize)
    gflops = 2 * n**3 / matmul_s / 1e9

    progress.update(2, 3, f"tiny backbone forward on {device}")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval().to(device)
    batch = torch.randn(params["batch"], 3, 224, 224, device=device)
    with torch.inference_mode():
        forward_s = _time(lambda: model(batch), 3, synchronize)
    progress.update(3, 3, "done")
    return {
        **info,
        "gpu_check": gpu_check,
        "speed": {"matmul_n": n, "matmul_gflops": round(gflops, 1), "resnet18_images_per_s":
                  round(params["batch"] / forward_s, 1), "resnet18_batch": params["batch"]},
        "benchmarks": {
            "matrix product (fp32)": f"{gflops:,.1f} GFLOP/s ({n}x{n})",
            "resnet18 forward (fp32, 224 px)": f"{params['batch'] / forward_s:,.1f} images/s (batch {params['batch']})",
        },
    }
