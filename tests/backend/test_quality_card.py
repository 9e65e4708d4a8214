"""A bundled model's card shows the map-quality benchmark's figures: read from the benchmark's JSON, joined
over runs of several paths, and written as a table with the machine and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.map_quality import merge_results
from benchmarks.quality_card import card_entry, card_section

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 1, "cuda": None}


def _cell(miou: float) -> dict[str, float]:
    return {"miou": miou, "miou_std": 0.01, "overall_accuracy": 0.9, "overall_accuracy_std": 0.0}


def _run(paths: list[str], miou: float, command: str) -> dict:
    scenes = {"river": {"title": "River", "k": {"3": {p: _cell(miou) for p in paths}}},
              "trees": {"title": "Trees", "k": {"3": {p: {"cannot_run": "no encoder for hr"} for p in paths}}}}
    return {"machine": MACHINE, "command": command, "seconds": 1.0, "seeds": 3, "paths": paths, "scenes": scenes}


def test_a_card_shows_each_scene_and_k_with_the_runs_commands(tmp_path: Path) -> None:
    merged = merge_results([_run(["rf"], 0.42, "benchmarks/map_quality.py --paths rf"),
                            _run(["skysense"], 0.71, "benchmarks/map_quality.py --paths skysense")])
    results = tmp_path / "results.json"
    results.write_text(json.dumps(merged), encoding="utf-8")
    entry = card_entry(results, {"rf": "random forest", "skysense": "default head"})
    assert entry["rows"] == [["river", "3", "0.42 ± 0.01", "0.71 ± 0.01"],
                             ["trees", "3", "cannot run", "cannot run"]]
    section = card_section(entry)
    assert "| scene | K | random forest | default head |" in section
    assert "| river | 3 | 0.42 ± 0.01 | 0.71 ± 0.01 |" in section
    assert ".venv/bin/python benchmarks/map_quality.py --paths skysense" in section
    assert "AMD EPYC" in section
    assert card_section(None) == ""


def test_a_card_refuses_a_result_without_its_paths(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_run(["rf"], 0.42, "x")), encoding="utf-8")
    with pytest.raises(ValueError, match="no figures of satdifuser"):
        card_entry(results, {"rf": "random forest", "satdifuser": "default head"})
