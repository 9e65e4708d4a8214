"""``python -m backend``: JSON on stdout, one line and a non-zero exit for a user error."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from backend import jobs
from backend.errors import UserError
from tests.conftest import BACKEND_PYTHON, ROOT, SAMPLE_SCENE


def backend(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BACKEND_PYTHON, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_info_prints_json() -> None:
    done = backend("--quiet", "info")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["torch"]
    assert info["device"] == "cpu" or info["device"].startswith(("cuda", "mps"))
    assert any(device["type"] == "cpu" for device in info["devices"])


def test_inspect_prints_json_and_progress() -> None:
    done = backend("inspect", str(SAMPLE_SCENE))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 4
    assert "[5/5] done" in done.stderr


def test_user_error_exits_2_with_one_line(tmp_path) -> None:
    done = backend("inspect", str(tmp_path / "missing.tif"))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Input not found")
    assert "missing.tif" in lines[0]


def test_every_job_has_a_sub_command() -> None:
    done = backend("--help")
    for name in jobs.JOBS:
        assert name in done.stdout


def test_params_are_checked_against_the_schema() -> None:
    spec = jobs.get("inspect")
    assert spec.bind({"image": "a.tif"}) == {"image": "a.tif", "aoi": None, "max_samples_px": 4_000_000}
    assert spec.bind({"image": "a.tif", "max_samples_px": "10"})["max_samples_px"] == 10
    with pytest.raises(UserError, match="expects int"):
        spec.bind({"image": "a.tif", "max_samples_px": "lots"})
    with pytest.raises(UserError, match="Unknown job 'nope'"):
        jobs.get("nope")


def test_a_choice_parameter_refuses_other_values() -> None:
    param = jobs.Param("fusion", "choice", "fusion", "global", choices=("global", "moe"))
    assert param.coerce("moe") == "moe"
    with pytest.raises(UserError, match="must be one of global, moe"):
        param.coerce("average")


def test_the_terrafuse_command_runs_the_backend_from_any_folder(tmp_path) -> None:
    """The backend as pip installs it (the Makefile installs it editable into .venv): a ``terrafuse`` console
    script, and ``python -m backend``, working from a folder that is not the checkout."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    shutil.copytree(ROOT / "backend", source / "backend", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "LICENSE"):  # a copy: the build writes its egg-info beside them
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([BACKEND_PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", str(source), "-w", str(wheels)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("terrafuse_backend-*.whl")
    installed = subprocess.run([BACKEND_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--disable-pip-version-check", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert not (site / "tests").exists()
    assert not (site / "plugin").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    for command in ([str(site / "bin" / "terrafuse")], [BACKEND_PYTHON, "-m", "backend"]):
        done = subprocess.run([*command, "--quiet", "inspect", str(SAMPLE_SCENE)], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["count"] == 4
        assert (site / "backend" / "__main__.py").is_file()
    usage = subprocess.run([str(site / "bin" / "terrafuse"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert usage.stdout.startswith("usage: terrafuse")
