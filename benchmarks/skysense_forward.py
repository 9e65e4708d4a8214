"""Forward time and parameter counts of SkySense configurations on this machine.

    python benchmarks/skysense_forward.py [--config skysense-tiny] [--batch 1] [--repeats 5]

The paper size is counted on the meta device (no memory allocated) and timed only with --time-paper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.skysense import SkySense, count_parameters, skysense_config


def inputs_for(config_name: str, batch: int) -> dict:
    hr_px, s2_px = (64, 16) if config_name == "skysense-tiny" else (512, 16)
    return {
        "hr": torch.randn(batch, 3, hr_px, hr_px),
        "s2": torch.randn(batch, 4, 10, s2_px, s2_px), "s2_doy": torch.tensor([[30, 120, 210, 300]] * batch),
        "s1": torch.randn(batch, 4, 2, s2_px, s2_px), "s1_doy": torch.tensor([[28, 118, 208, 298]] * batch),
        "lonlat": torch.tensor([[11.0, 46.0]] * batch),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="skysense-tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-paper", action="store_true")
    args = parser.parse_args()
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.device("meta"):
        report["skysense-paper"] = count_parameters(SkySense(skysense_config("skysense-paper")))
    report["skysense-tiny"] = count_parameters(SkySense(skysense_config("skysense-tiny")))
    if args.config != "skysense-paper" or args.time_paper:
        model = SkySense(skysense_config(args.config)).eval()
        inputs = inputs_for(args.config, args.batch)
        with torch.inference_mode():
            model(inputs)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = model(inputs)
            report["forward_s"] = (time.perf_counter() - start) / args.repeats
        report["input"] = {k: list(v.shape) for k, v in inputs.items()}
        report["features"] = list(out["features"].shape)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
