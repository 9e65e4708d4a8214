"""Throughput of SatDiFuser's backbone features and of whole segmentation, against the device's peak.

For each tile size, precision and batch size: tiles/s and ms/tile of the feature extraction (VAE encoder,
DDIM inversion to 3 timesteps whose UNet calls yield the features) and of the whole segmentation (the
model's forward: features, fusion, head), FLOPs per tile counted with torch's FlopCounterMode, the achieved
TFLOP/s and its fraction of the device's peak (a table of datasheet peaks for GPUs; on the CPU a matmul
probe measures it, and the table says so). In the same run, the straightforward path (float32, batch 1,
the inversion's UNet calls not reused for features, every UNet call run to conv_out, the text encoder run
per tile) is timed on the same tiles, so the speed-up is a ratio measured side by side; its features are
checked equal to the fast path's in float32.

    .venv/bin/python benchmarks/throughput.py                   # the bundled backbone, 256 and 512 px
    .venv/bin/python benchmarks/throughput.py --quick           # 256 px, batches 1 and 4, one repeat
    .venv/bin/python benchmarks/throughput.py --backbone sd21-architecture --sizes 512 --batches 1,8,16,32 \\
        --dtypes fp32,bf16,fp16 --compile --json throughput.json   # SD 2.1's architecture, random weights

``--backbone`` takes anything ``train`` takes (a registered name, a diffusers folder, a zip, a hub id) or
an architecture with random weights (``sd21-architecture``, ``terrafuse-tiny-architecture``): the real
cost of DiffusionSat / SD 2.1 without a download. The machine's load average is printed with the figures:
on a shared machine they are only as good as the load was low.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.jobs.info import cpu_name  # noqa: E402
from backend.models.diffusion import DiffusionBackbone, DiffusionFeatureExtractor, InferenceSettings  # noqa: E402
from backend.models.diffusion.architectures import (  # noqa: E402
    ARCHITECTURES,
    build_random_backbone,
    build_random_text_encoder,
)
from backend.models.diffusion.fast_path import autocast_dtype  # noqa: E402
from backend.models.segmenter import SatDiFuser  # noqa: E402

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CLASSES = [{"id": i + 1, "name": name, "colour": colour} for i, (name, colour) in
           enumerate([("water", "#1f78b4"), ("trees", "#33a02c"), ("field", "#ffff99"), ("urban", "#e31a1c")])]

#: Dense (no sparsity) datasheet peaks in TFLOP/s by precision; the first name contained in the device's
#: name wins, so specific names come first. "fp32" on CUDA is the TF32 tensor-core peak: cuDNN runs float32
#: convolutions in TF32 by default (torch.backends.cudnn.allow_tf32). Sources: NVIDIA's datasheets and
#: architecture whitepapers (GeForce/RTX: float16/bfloat16 with float32 accumulation, as PyTorch runs them).
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"fp32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100 NVL", {"fp32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    ("H100", {"fp32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", {"fp32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    ("H200", {"fp32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    ("A100", {"fp32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("L40S", {"fp32": 183.0, "bf16": 362.1, "fp16": 362.1}),
    ("L4", {"fp32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("RTX 4090", {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    ("RTX 3090", {"fp32": 35.6, "bf16": 71.0, "fp16": 71.0}),
    ("RTX A6000", {"fp32": 77.4, "bf16": 154.8, "fp16": 154.8}),
]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()



def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 1.5) -> float:
    """TFLOP/s of the best of repeated n x n matrix products in ``dtype`` on this CPU: a measured, not a
    datasheet, peak (what torch's kernels reach on these cores, with the load at the time)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The peak TFLOP/s the achieved figure is compared with, and where it comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name:
                return peaks[precision], f"datasheet {key}, dense {'tf32' if precision == 'fp32' else precision}"
        return None, f"no datasheet peak known for {name}"
    dtype = DTYPE_NAMES[precision]
    return cpu_matmul_peak(dtype), f"measured matmul probe ({precision}, 1024^3)"


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_runs(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after one warm-up call."""
    fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def open_backbone(name: str, device: torch.device) -> tuple[DiffusionBackbone, DiffusionBackbone | None, Any]:
    """The backbone, a shape-only (meta) twin for counting FLOPs when it is a random architecture, and the
    text encoder of the straightforward path (None when the backbone has none)."""
    if name in ARCHITECTURES:
        return (build_random_backbone(name, device), build_random_backbone(name, "meta"),
                build_random_text_encoder(name, device))
    from backend.models.diffusion import load_backbone
    from backend.models.diffusion.layout import find_layout

    backbone = load_backbone(name, device)
    layout = find_layout(backbone.root)
    text_encoder = None
    if layout.text_encoder is not None:
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(  # nosec B615 - a local folder, nothing is downloaded
            str(layout.text_encoder), local_files_only=True).to(device).eval().requires_grad_(False)
    return backbone, None, text_encoder


def segmenter(extractor: DiffusionFeatureExtractor, tile_px: int) -> SatDiFuser:
    """A random head of the train job's defaults (global fusion, 64 channels, light per-pixel head)."""
    torch.manual_seed(0)
    model = SatDiFuser.create(extractor.feature_info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 64},
                              extractor=extractor, tile_px=tile_px)
    return model.to(extractor.backbone.device).eval()


class StraightforwardPath:
    """The path one writes first: per tile, the text encoder for the prompt, the VAE, the DDIM inversion's
    K UNet calls, then K more calls for the features, each to conv_out, all in float32."""

    def __init__(self, backbone: DiffusionBackbone, text_encoder: Any, tile_px: int) -> None:
        settings = InferenceSettings(precision="fp32", channels_last=False, compile=False)
        self.backbone = backbone
        self.extractor = DiffusionFeatureExtractor(backbone, stop_early=False, reuse_inversion_calls=False,
                                                   settings=settings)
        self.model = segmenter(self.extractor, tile_px)
        self.text_encoder = text_encoder
        self.tokens = torch.randint(0, text_encoder.config.vocab_size, (1, text_encoder.config.max_position_embeddings),
                                    generator=torch.Generator().manual_seed(0)) if text_encoder is not None else None

    def _prompt(self) -> None:
        if self.text_encoder is None:
            return
        with torch.inference_mode():
            hidden = self.text_encoder(self.tokens.to(self.backbone.device)).last_hidden_state
        self.extractor.backbone = dataclasses.replace(self.backbone, prompt_embedding=hidden)

    def features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for tile in images.split(1):
            self._prompt()
            outputs.append(self.extractor(tile))
        return outputs

    def segment(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        with torch.inference_mode():
            for tile in images.split(1):
                self._prompt()
                outputs.append(self.model(tile))
        return outputs


def check_same_features(backbone: DiffusionBackbone, images: torch.Tensor) -> float:
    """Largest relative difference between the straightforward path's features (its own prompt left out)
    and the fast path's in float32: they must be the same features."""
    settings = InferenceSettings(precision="fp32", channels_last=False)
    fast = DiffusionFeatureExtractor(backbone, settings=settings)(images[:1])
    slow = DiffusionFeatureExtractor(backbone, stop_early=False, reuse_inversion_calls=False,
                                     settings=settings)(images[:1])
    return max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(fast, slow))


def row(path: str, task: str, tile_px: int, precision: str, batch: int, seconds: list[float], flops: int,
        peak: tuple[float | None, str], device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    median = statistics.median(seconds)
    tiles_s = batch / median
    tflops = flops * tiles_s / 1e12
    peak_tflops, peak_source = peak
    result = {"path": path, "task": task, "tile_px": tile_px, "precision": precision, "batch": batch,
              "ms_per_tile": 1000 * median / batch, "tiles_per_s": tiles_s, "seconds": seconds,
              "gflop_per_tile": flops / 1e9, "achieved_tflops": tflops, "peak_tflops": peak_tflops,
              "peak_source": peak_source, "fraction_of_peak": tflops / peak_tflops if peak_tflops else None,
              "load_average": load_average()}
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result.update(extra or {})
    return result


HEADER = (f"{'path':<16} {'task':<9} {'px':>4} {'prec':<5} {'batch':>5} {'ms/tile':>9} {'tiles/s':>8} "
          f"{'GFLOP/tile':>10} {'TFLOP/s':>8} {'of peak':>8} {'load':>5}")


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        fraction = f"{100 * r['fraction_of_peak']:.1f} %" if r["fraction_of_peak"] is not None else "-"
        print(f"{r['path']:<16} {r['task']:<9} {r['tile_px']:>4} {r['precision']:<5} {r['batch']:>5} "
              f"{r['ms_per_tile']:>9.1f} {r['tiles_per_s']:>8.2f} {r['gflop_per_tile']:>10.1f} "
              f"{r['achieved_tflops']:>8.3f} {fraction:>8} {r['load_average'][0]:>5.1f}")


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tile size and task: the best fast configuration against the straightforward path."""
    out = []
    for tile_px in sorted({r["tile_px"] for r in rows}):
        for task in ("features", "segment"):
            base = [r for r in rows if r["path"] == "straightforward" and r["tile_px"] == tile_px and r["task"] == task]
            fast = [r for r in rows if r["path"] != "straightforward" and r["tile_px"] == tile_px and r["task"] == task]
            if base and fast:
                best = max(fast, key=lambda r: r["tiles_per_s"])
                out.append({"tile_px": tile_px, "task": task, "speedup": best["tiles_per_s"] / base[0]["tiles_per_s"],
                            "best": {k: best[k] for k in ("path", "precision", "batch", "tiles_per_s")},
                            "straightforward_tiles_per_s": base[0]["tiles_per_s"]})
    return out


def tile_flops(backbone: DiffusionBackbone, text_encoder: Any, tile_px: int, device: torch.device) -> dict[str, int]:
    """FLOPs of one tile through each path, counted on ``backbone`` (a meta twin counts without compute)."""
    images = torch.zeros(1, 3, tile_px, tile_px, device=backbone.device)
    fast = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp32"))
    slow = StraightforwardPath(backbone, None, tile_px)
    flops = {"features": count_flops(partial(fast, images)),
             "segment": count_flops(partial(segmenter(fast, tile_px), images)),
             "straightforward features": count_flops(partial(slow.features, images)),
             "straightforward segment": count_flops(partial(slow.segment, images))}
    if text_encoder is not None:
        tokens = torch.zeros(1, text_encoder.config.max_position_embeddings, dtype=torch.long, device=device)
        text_flops = count_flops(partial(text_encoder, tokens))
        flops["straightforward features"] += text_flops
        flops["straightforward segment"] += text_flops
    return flops


def time_fast_path(backbone: DiffusionBackbone, settings: InferenceSettings, images: torch.Tensor,
                   batches: list[int], flops: dict[str, int], peak: tuple[float | None, str],
                   repeats: int) -> list[dict[str, Any]]:
    """Features and whole segmentation with ``settings`` for each batch size; stops at out-of-memory."""
    device = backbone.device
    tile_px = int(images.shape[-1])
    path = "fast+compile" if settings.compile else "fast"
    extractor = DiffusionFeatureExtractor(backbone, settings=settings)
    model = segmenter(extractor, tile_px)
    if settings.compile:
        started = time.perf_counter()
        with torch.inference_mode():
            model(images[:1])
        synchronize(device)
        failure = backbone.compiled.failure if backbone.compiled is not None else "not compiled"
        print(f"compile + first call: {time.perf_counter() - started:.1f} s"
              f"{f' (FAILED, eager: {failure})' if failure else ''}", flush=True)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        extra = {"autocast": str(autocast_dtype(settings.precision, device)), "compile": settings.compile,
                 "channels_last": backbone.channels_last}
        try:
            for task, fn in (("features", extractor), ("segment", model)):
                with torch.inference_mode():
                    seconds = time_runs(partial(fn, images[:batch]), device, repeats)
                rows.append(row(path, task, tile_px, settings.precision, batch, seconds, flops[task], peak, device,
                                extra))
                print_rows(rows[-1:])
        except torch.cuda.OutOfMemoryError:
            print(f"{path} {settings.precision} batch {batch}: out of memory", flush=True)
            torch.cuda.empty_cache()
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="terrafuse-tiny",
                        help="a backbone train accepts, or an architecture with random weights: "
                             + ", ".join(sorted(ARCHITECTURES)))
    parser.add_argument("--sizes", default="256,512", help="tile sizes in px, comma-separated")
    parser.add_argument("--batches", default=None, help="batch sizes (default: 1,4,8 on the CPU, 1,8,16,32 on CUDA)")
    parser.add_argument("--dtypes", default=None, help="precisions among fp32, bf16, fp16 (default: fp32,bf16 on "
                                                       "the CPU, fp32,bf16,fp16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (after a warm-up)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    parser.add_argument("--no-baseline", action="store_true", help="skip the straightforward path")
    parser.add_argument("--quick", action="store_true", help="256 px, batches 1 and 4, one repeat")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(",")]
    batches = [1, 4] if args.quick else [int(b) for b in (args.batches or ("1,8,16,32" if gpu else "1,4,8")).split(",")]
    precisions = (args.dtypes or ("fp32,bf16,fp16" if gpu else "fp32,bf16")).split(",")
    repeats = 1 if args.quick else args.repeats
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]

    print(f"device: {device_name(device)}; torch {torch.__version__}; load average "
          f"{' '.join(f'{v:.2f}' for v in load_average())}", flush=True)
    backbone, meta_twin, text_encoder = open_backbone(args.backbone, device)
    print(f"backbone: {backbone.name}; text encoder for the straightforward path: "
          f"{'yes' if text_encoder is not None else 'none (the backbone ships its prompt embedding)'}", flush=True)
    peaks = {p: device_peak(device, p) for p in precisions}
    for precision, (tflops, source) in peaks.items():
        print(f"peak {precision}: {f'{tflops:.2f} TFLOP/s' if tflops else '-'} ({source})", flush=True)
    rows: list[dict[str, Any]] = []
    checks: dict[int, float] = {}
    generator = torch.Generator().manual_seed(0)
    print(HEADER, flush=True)
    for tile_px in sizes:
        images = (torch.rand(max(batches), 3, tile_px, tile_px, generator=generator) * 2 - 1).to(device)
        flops = tile_flops(meta_twin or backbone, text_encoder, tile_px, device)
        print(f"{tile_px} px: GFLOP per tile " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), flush=True)
        if not args.no_baseline:
            checks[tile_px] = check_same_features(backbone, images)
            print(f"{tile_px} px: straightforward and fast features differ by {checks[tile_px]:.2e} (relative)",
                  flush=True)
            base = StraightforwardPath(backbone, text_encoder, tile_px)
            for task in ("features", "segment"):
                seconds = time_runs(partial(getattr(base, task), images[:1]), device, repeats)
                rows.append(row("straightforward", task, tile_px, "fp32", 1, seconds,
                                flops[f"straightforward {task}"], peaks.get("fp32") or device_peak(device, "fp32"),
                                device))
                print_rows(rows[-1:])
        variants = [False] + ([True] if args.compile else [])
        for compiled in variants:
            for precision in precisions:
                settings = InferenceSettings(precision=precision, channels_last=channels_last, compile=compiled)
                rows += time_fast_path(backbone, settings, images, batches, flops, peaks[precision], repeats)
    print()
    print(HEADER)
    print_rows(rows)
    ratios = speedups(rows)
    for ratio in ratios:
        best = ratio["best"]
        print(f"speed-up {ratio['tile_px']} px {ratio['task']}: {ratio['speedup']:.2f}x "
              f"({best['path']} {best['precision']} batch {best['batch']}: {best['tiles_per_s']:.2f} tiles/s against "
              f"{ratio['straightforward_tiles_per_s']:.2f})")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in load_average())}")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device_name(device), "torch": torch.__version__, "backbone": backbone.name,
            "peaks": {p: {"tflops": t, "source": s} for p, (t, s) in peaks.items()},
            "feature_check_relative_difference": checks, "rows": rows, "speedups": ratios,
        }, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
