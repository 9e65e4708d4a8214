"""The map-quality figures of a bundled model's card, from a ``benchmarks/map_quality.py`` result (JSON).

The training scripts of the bundled models put them into their ``training_log.json`` (``--quality``) and
write them into the card, so that the card says how well a head on the model maps, next to the forest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _cell(row: dict[str, Any], path: str) -> str:
    cell = row.get(path) or {}
    if "cannot_run" in cell:
        return "cannot run"
    return f"{cell['miou']:.2f} ± {cell['miou_std']:.2f}" if cell else ""


def card_entry(results_path: Path, columns: dict[str, str]) -> dict[str, Any]:
    """The figures a card shows: per scene and K, the mIoU (mean ± spread over seeds) of each path of
    ``columns`` ({path: column title}), with the machine and commands of the run(s)."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    missing = [p for p in columns if p not in results.get("paths", ())]
    if missing:
        raise ValueError(f"{results_path} has no figures of {', '.join(missing)}")
    runs = results.get("runs") or [{k: results.get(k) for k in ("machine", "command", "seconds")}]
    rows = [[name, k, *(_cell(row, path) for path in columns)]
            for name, scene in results["scenes"].items() for k, row in scene["k"].items()]
    return {"columns": ["scene", "K", *columns.values()], "rows": rows, "seeds": results["seeds"],
            "runs": runs, "source": str(results_path)}


def _machine(machine: dict[str, Any]) -> str:
    threads = machine.get("torch_threads")
    device = f"GPU {machine['cuda']}" if machine.get("cuda") else "no GPU"
    return (f"{machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} cores"
            + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else "") + f", {device}")


def card_section(entry: dict[str, Any] | None) -> str:
    """The card's "Map quality" section (empty without figures)."""
    if not entry:
        return ""
    machine = entry["runs"][0].get("machine") or {}
    lines = ["| " + " | ".join(entry["columns"]) + " |", "|" + "---|" * len(entry["columns"])]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in entry["rows"]]
    commands = "\n".join(f".venv/bin/python {run['command']}" for run in entry["runs"] if run.get("command"))
    return f"""## Map quality: a few-shot head on this model, against the random forest

`benchmarks/map_quality.py` on the six real labelled scenes of `benchmarks/scenes/` (docs/quality.md):
for each scene and seed, K labels per class from one spatial fold train every path and the other fold's
labels score it once. Cells are mIoU, mean ± spread over {entry['seeds']} seeds. Machine: {_machine(machine)}.

{chr(10).join(lines)}

```sh
{commands}
```
"""
