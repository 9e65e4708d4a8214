"""Set up backend: the commands it runs, and a real environment made on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from terrafuse_under_test.plugin.runtime.environment import (
    REQUIREMENTS,
    BackendEnvironment,
    InstallError,
    find_base_python,
    install_commands,
    run_install,
    split_requirements,
)
from terrafuse_under_test.plugin.runtime.torch_build import build_for


def test_the_pinned_list_without_the_torch_family() -> None:
    rest = split_requirements(REQUIREMENTS.read_text().splitlines())
    assert any(line.startswith("diffusers==") for line in rest)
    assert not [line for line in rest if line.split("==")[0] in ("torch", "torchvision", "triton")]
    assert not [line for line in rest if line.startswith("nvidia-")]


def test_commands_install_only_into_the_new_environment(tmp_path) -> None:
    env = BackendEnvironment(tmp_path / "env")
    commands = install_commands(env, "/usr/bin/python3", build_for("cu128", "test"))
    assert commands[0] == ["/usr/bin/python3", "-m", "venv", str(env.path)]
    for command in commands[1:]:
        assert command[:6] == [str(env.python), "-m", "pip", "install", "--only-binary", ":all:"]
    torch = commands[1]
    assert "torch==2.14.1" in torch
    assert torch[-2:] == ["--index-url", "https://download.pytorch.org/whl/cu128"]
    assert "--index-url" not in commands[2], "only torch comes from PyTorch's index"
    # An environment that exists already is completed, not made again.
    (env.python.parent).mkdir(parents=True)
    env.python.write_text("")
    assert install_commands(env, "/usr/bin/python3", None)[0][0] == str(env.python)


def test_a_real_environment_is_made_and_qgis_python_is_untouched(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# tiny\niniconfig==2.3.1\n")
    env = BackendEnvironment(tmp_path / "env")
    base = find_base_python(["/usr/bin/python3"])
    before = subprocess.run([base, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    steps: list[tuple[int, int, str]] = []
    run_install(install_commands(env, base, None, requirements), lambda *a: steps.append(a))
    assert steps[-1] == (2, 2, "the backend's environment is ready")
    assert any("iniconfig" in message for *_, message in steps)
    out = subprocess.run([str(env.python), "-c", "import iniconfig, sys; print(sys.prefix)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == env.path
    after = subprocess.run([base, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert before == after


def test_a_failed_install_says_why(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("terrafuse-no-such-package-anywhere==0.0.1\n")
    env = BackendEnvironment(tmp_path / "env")
    with pytest.raises(InstallError, match=r"failed \(exit code 1\)[\s\S]*terrafuse-no-such-package"):
        run_install(install_commands(env, sys.executable, None, requirements), lambda *a: None)


def test_cancel_stops_the_install(tmp_path) -> None:
    command = [[sys.executable, "-c", "import time\nfor i in range(100): print(i, flush=True); time.sleep(0.05)"]]
    with pytest.raises(InstallError, match="Cancelled"):
        run_install(command, lambda *a: None, is_cancelled=lambda: True)


def test_no_usable_base_python_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InstallError, match="No Python 3.9\\+ with venv"):
        find_base_python([str(tmp_path / "missing")])
