"""stdout carries the job's JSON alone: whatever a library writes while the job runs, from Python or straight
to descriptor 1 from C (Ray's "A worker died" paragraph), goes to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NOISY_JOB = """
import os, sys
from backend import __main__ as command_line

def noisy(name, raw, progress):
    os.write(1, b"(raylet) A worker died or was killed while executing a task\\n")  # as C++ code does
    print("a library's print")
    return {"job": name, "done": True}

command_line.run_job = noisy
sys.exit(command_line.main(["--quiet", "info"]))
"""


def test_the_result_is_the_only_thing_on_stdout() -> None:
    done = subprocess.run([sys.executable, "-c", NOISY_JOB], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"job": "info", "done": True}
    assert "A worker died" in done.stderr
    assert "a library's print" in done.stderr
