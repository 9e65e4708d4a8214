"""The torch build chosen from recorded nvidia-smi outputs (these machines have no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from terrafuse_under_test.plugin.runtime.gpu import GpuReport, parse_cuda_version, parse_query, query_gpus
from terrafuse_under_test.plugin.runtime.torch_build import build_for, choose_torch_build

DATA = Path(__file__).parent / "data"


def recorded(machine: str, query_name: str | None = None):
    """A runner that answers nvidia-smi's two calls from the recorded files."""

    def runner(args: list[str]) -> str:
        if any(arg.startswith("--query-gpu") for arg in args):
            return (DATA / f"query-{query_name or machine}.csv").read_text()
        return (DATA / f"nvidia-smi-{machine}.txt").read_text()

    return runner


@pytest.mark.parametrize(
    ("machine", "query", "tag", "index"),
    [
        ("h100", None, "cu128", "https://download.pytorch.org/whl/cu128"),
        ("rtx4090", "rtx4090x2", "cu130", "https://download.pytorch.org/whl/cu130"),
        ("gtx1080", None, "cpu", "https://download.pytorch.org/whl/cpu"),  # CUDA 12.2 < 12.6: driver too old
        ("old-driver", None, "cpu", "https://download.pytorch.org/whl/cpu"),
    ],
)
def test_build_from_recorded_nvidia_smi(machine, query, tag, index) -> None:
    report = query_gpus(recorded(machine, query))
    build = choose_torch_build(report, platform="linux")
    assert (build.tag, build.index_url) == (tag, index)
    if tag == "cpu":
        assert "too old" in build.reason
        assert "update the NVIDIA driver" in build.reason


def test_pre_volta_gpus_stop_at_cuda_12_6() -> None:
    driver, gpus = parse_query("NVIDIA GeForce GTX 1080, 580.82.07, 8192 MiB, 6.1")
    report = GpuReport(driver, (13, 0), gpus)
    build = choose_torch_build(report, platform="linux")
    assert build.tag == "cu126"
    assert "compute capability 6.1" in build.reason


def test_without_the_cuda_line_the_driver_version_decides() -> None:
    _, gpus = parse_query("NVIDIA A100, 570.86.10, 40960 MiB, 8.0")
    assert choose_torch_build(GpuReport("570.86.10", None, gpus), platform="linux").tag == "cu128"
    # Windows drivers number differently: 570.26 is not enough there.
    assert choose_torch_build(GpuReport("570.26", None, gpus), platform="win32").tag == "cu126"


def test_no_gpu_gives_the_cpu_build_and_macos_the_default() -> None:
    assert choose_torch_build(None, platform="linux").tag == "cpu"
    assert query_gpus(lambda args: "") is None
    assert choose_torch_build(None, platform="darwin").index_url is None


def test_report_summary_and_parsing() -> None:
    report = query_gpus(recorded("rtx4090", "rtx4090x2"))
    assert len(report.gpus) == 2
    assert report.gpus[0].compute_capability == (8, 9)
    assert report.driver_tuple[:2] == (580, 82)
    assert "NVIDIA GeForce RTX 4090 (24 GiB)" in report.summary()
    assert parse_cuda_version("no banner") is None


def test_the_user_can_override_the_choice() -> None:
    assert build_for("cu126").index_url.endswith("/cu126")
    assert build_for("default").index_url is None
    with pytest.raises(ValueError, match="unknown torch build"):
        build_for("cu999")
