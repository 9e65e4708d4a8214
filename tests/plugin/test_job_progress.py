"""Progress that tells the truth: by phase, time left from the current phase's rate after a warm-up (never
from loading the model), the device from the first event, a bar that never goes backwards."""

from __future__ import annotations

from terrafuse_under_test.plugin.job_progress import JobProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_training_told_by_phase() -> None:
    clock = Clock()
    progress = JobProgress(clock)
    assert progress.event({"type": "started", "device": "CPU: 2 cores"}) is None
    state = progress.update(0, 1, "loading the backbone")
    assert state.device == "CPU: 2 cores", "the device from the first event"
    assert state.left_s is None
    assert state.status_line() == "Loading the model"
    clock.now += 240  # four minutes of loading must not count in any estimate
    percents, lines = [], []
    for i in range(10):  # features: 10 tiles, 2 s each, the first one slow (warm-up)
        clock.now += 20 if i == 0 else 2
        state = progress.update(i, 53, f"backbone features, tile {i + 1} of 10")
        percents.append(state.percent)
        lines.append(state.status_line())
    assert lines[0] == "Features 1 of 10"
    assert lines[5] == "Features 6 of 10, about 8 s left", lines
    for epoch in range(40):  # epochs: 0.5 s each, counted on their own
        clock.now += 0.5
        state = progress.update(10 + epoch + 1, 53, f"epoch {epoch + 1} of 40, loss 0.1")
        percents.append(state.percent)
        if epoch == 19:
            assert state.status_line() == "Epochs 20 of 40, about 10 s left"
    state = progress.update(53, 53, "saving the head")
    assert state.left_s is None
    assert state.status_line() == "Writing"
    percents.append(state.percent)
    # The preview starts its own count (loading, tiles): the bar goes on from where it is.
    for done, total, message in ((0, 6, "loading the model"), (1, 6, "tile 1 of 4"), (3, 6, "tile 3 of 4"),
                                 (6, 6, "done")):
        clock.now += 1
        state = progress.update(done, total, message)
        percents.append(state.percent)
    assert percents == sorted(percents), "the bar never goes backwards"
    assert percents[-1] == 100


def test_an_older_worker_without_phases_and_a_job_without_them() -> None:
    clock = Clock()
    progress = JobProgress(clock)
    for step in range(1, 6):
        clock.now += 1
        state = progress.event({"type": "progress", "done": step, "total": 10, "message": f"step {step}"})
    assert state.phase == ""
    assert state.status_line() == "Step 5 (5 of 10), about 5 s left"
    assert state.percent == 50
