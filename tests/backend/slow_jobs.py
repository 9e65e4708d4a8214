"""A job for the protocol's tests: counts slowly, so that a test can cancel it or kill its worker.

Registered only where a test asks for it (``TERRAFUSE_JOB_MODULES=tests.backend.slow_jobs``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from backend.jobs import JobSpec, Param, register
from backend.progress import Progress


def run_count(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    steps = params["steps"]
    for step in range(steps):
        progress.update(step, steps, f"step {step}")
        if step == params["fail_at"]:
            raise RuntimeError(f"boom at step {step}")
        time.sleep(params["step_s"])
    progress.update(steps, steps, "done")
    return {"steps": steps, "pid": os.getpid()}


register(JobSpec(
    name="test_count",
    title="Count slowly (tests only)",
    help="Counts to 'steps', sleeping 'step_s' each step.",
    target="tests.backend.slow_jobs:run_count",
    params=(Param("steps", "int", "how many steps", 10), Param("step_s", "float", "seconds per step", 0.05),
            Param("fail_at", "int", "raise an internal error at this step", -1)),
))
