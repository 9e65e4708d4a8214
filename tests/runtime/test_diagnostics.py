"""The diagnostics report and the model folder's checksums."""

from __future__ import annotations

import hashlib
import json

from terrafuse_under_test.plugin.runtime.diagnostics import CHECKSUM_CACHE, build_report, model_folder_listing
from terrafuse_under_test.plugin.runtime.gpu import Gpu, GpuReport


def test_model_files_are_listed_with_checksums_and_cached(tmp_path) -> None:
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "model.safetensors"
    weights.write_bytes(b"abc" * 1000)
    listing = model_folder_listing(tmp_path)
    assert listing == [{"path": "unet/model.safetensors", "size_b": 3000,
                        "sha256": hashlib.sha256(b"abc" * 1000).hexdigest()}]
    cache = json.loads((tmp_path / CHECKSUM_CACHE).read_text())
    assert cache["unet/model.safetensors"]["sha256"] == listing[0]["sha256"]
    # A changed file is hashed again.
    weights.write_bytes(b"xyz" * 999)
    assert model_folder_listing(tmp_path)[0]["sha256"] == hashlib.sha256(b"xyz" * 999).hexdigest()
    assert model_folder_listing(tmp_path / "missing") == []


def test_the_report_has_every_section() -> None:
    gpu = GpuReport("570.133.20", (12, 8), [Gpu("NVIDIA H100", 81559, (9, 0))])
    backend = {"python": "3.11.2", "torch": "2.14.1+cpu", "cuda_build": None, "cuda_available": False,
               "device": "cpu", "devices": [{"type": "cpu", "cores": 2}], "packages": {"diffusers": "0.42.1"},
               "gpu_check": {"status": "gpu_unusable", "message": "A GPU is present but torch is a CPU-only build"}}
    report = build_report("3.22.16", "/env/bin/python", gpu, backend, None,
                          [{"path": "a.safetensors", "size_b": 10, "sha256": "ab" * 32}], "/models",
                          ["2026-11-23 RuntimeError: boom"])
    for expected in ("## System", "QGIS: 3.22.16", "NVIDIA H100 (80 GiB); driver 570.133.20 (CUDA 12.8)",
                     "Interpreter: /env/bin/python", "diffusers: 0.42.1", "GPU check: gpu_unusable",
                     "a.safetensors  10 B  sha256 abab", "RuntimeError: boom"):
        assert expected in report
