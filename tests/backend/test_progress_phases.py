"""Progress by phase: each update names its phase (given, or read from the message) and its own count."""

from __future__ import annotations

import pytest

from backend.jobs import JOBS, PARAM_GROUPS, Param
from backend.progress import Progress, phase_count, phase_of


@pytest.mark.parametrize(("message", "phase", "count"), [
    ("loading the model", "loading", None),
    ("loading the backbone", "loading", None),
    ("reading the labels", "loading", None),
    ("backbone features, tile 3 of 10", "features", (3, 10)),
    ("SkySense features, tile 1 of 4", "features", (1, 4)),
    ("epoch 5 of 40, loss 0.3012", "epochs", (5, 40)),
    ("validating", "validating", None),
    ("baseline: random forest on band values", "validating", None),
    ("tile 7 of 25", "tiles", (7, 25)),
    ("12 of 64 tiles", "tiles", (12, 64)),
    ("writing the outputs", "writing", None),
    ("saving the head", "writing", None),
    ("band 2 of 4", "reading", (2, 4)),
    ("done", "", None),
])
def test_the_messages_of_the_jobs_have_their_phase(message, phase, count) -> None:
    assert phase_of(message) == phase
    assert phase_count(message) == count


def test_a_new_phase_is_reported_at_once_and_a_given_phase_wins() -> None:
    seen: list[tuple[int, int, str, str]] = []
    progress = Progress(lambda d, t, m: seen.append((d, t, m, progress.phase)), min_interval_s=60)
    progress.update(0, 10, "loading the model")
    progress.update(1, 10, "tile 1 of 9")  # within the interval, but a new phase
    progress.update(2, 10, "tile 2 of 9")  # dropped: same phase, too soon
    progress.update(3, 10, "warming up", phase="tiles")
    assert [(d, p) for d, _, _, p in seen] == [(0, "loading"), (1, "tiles")]
    progress.update(10, 10, "done")
    assert seen[-1][0] == 10


def test_every_parameter_has_a_short_label_and_a_group() -> None:
    for spec in JOBS.values():
        for param in spec.params:
            assert param.group in PARAM_GROUPS
            assert param.label, (spec.name, param.name)
            assert len(param.label) <= 24, (spec.name, param.name, param.label)
            assert "_" not in param.label, "a label, not the raw name"
            assert not (param.required and param.group == "advanced"), "a required parameter is never folded"
    train = {p.name: p for p in JOBS["train"].params}
    assert (train["out"].label, train["out"].group) == ("Output folder", "output")
    assert train["cache_max_mb"].group == "advanced"
    assert JOBS["segment"].params[1].label == "Head"
    assert sum(p.group == "essential" for p in JOBS["train"].params) <= 6, "a short, task-shaped form"
    assert Param("x", "int", "help", 1, label="X", group="output").group == "output"
    with pytest.raises(ValueError, match="unknown group"):
        Param("x", "int", "help", 1, group="misc")
    schema = JOBS["train"].to_json()["params"][0]
    assert {"label", "group", "help"} <= set(schema)


def test_the_registry_needs_neither_numpy_nor_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None; "
            "import backend.jobs as j; print(len(j.JOBS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 6
