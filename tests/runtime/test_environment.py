"""Set up backend: the commands it runs, and a real environment made on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from terrafuse_under_test.plugin.runtime.environment import (
    LOCK_COPY,
    REQUIREMENTS,
    BackendEnvironment,
    InstallError,
    find_base_python,
    install_commands,
    run_install,
    split_requirements,
)
from terrafuse_under_test.plugin.runtime.torch_build import build_for

# iniconfig 2.3.1's wheel and source archive on PyPI (as in requirements/qgis-test.txt).
INICONFIG = ("iniconfig==2.3.1 --hash=sha256:67f4b9c50da0dedf52af349e7749a80a9057a5031199791b906c3bb3ae878960 "
             "--hash=sha256:9121e2c1fdb355232495be3194c8dfe87ccc2d5dee45947b78e68f499790d7a7\n")


def test_the_pinned_list_without_the_torch_family() -> None:
    family, rest = split_requirements(REQUIREMENTS.read_text())
    assert any(entry.name == "diffusers" for entry in rest)
    assert {"torch", "torchvision", "triton"} <= {entry.name for entry in family}
    assert not [entry for entry in rest if entry.name in ("torch", "torchvision", "triton")]
    assert not [entry for entry in rest if entry.name.startswith(("nvidia-", "cuda-"))]
    assert all(entry.hashes for entry in family + rest)


def test_a_lock_entry_without_a_hash_is_refused_before_pip_runs(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(INICONFIG + "mock==5.2.0\n")
    with pytest.raises(InstallError, match=r"mock==5.2.0 has no sha256 hash; run 'make lock'"):
        install_commands(BackendEnvironment(tmp_path / "env"), "/usr/bin/python3", None, requirements)


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
    # Everything else by hash, from the lock's copy in the new environment, without the CUDA 13 family.
    assert commands[2][6:] == ["--require-hashes", "-r", str(env.path / LOCK_COPY)]
    copied = (env.path / LOCK_COPY).read_text()
    assert "diffusers==" in copied
    assert "--hash=sha256:" in copied
    assert "torch==" not in copied
    assert "nvidia-" not in copied
    # PyPI's own torch build ("default") comes from the lock, by hash, in the same single step.
    commands = install_commands(BackendEnvironment(tmp_path / "mac"), "/usr/bin/python3", build_for("default"))
    assert len(commands) == 2
    assert "--index-url" not in commands[1]
    assert commands[1][6:7] == ["--require-hashes"]
    assert "torch==2.14.1 " in (tmp_path / "mac" / LOCK_COPY).read_text()
    # An environment that exists already is completed, not made again.
    (env.python.parent).mkdir(parents=True)
    env.python.write_text("")
    assert install_commands(env, "/usr/bin/python3", None)[0][0] == str(env.python)


def test_a_real_environment_is_made_and_qgis_python_is_untouched(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# tiny\n" + INICONFIG)
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
    requirements.write_text("terrafuse-no-such-package-anywhere==0.0.1 --hash=sha256:" + "0" * 64 + "\n")
    env = BackendEnvironment(tmp_path / "env")
    with pytest.raises(InstallError, match=r"failed \(exit code 1\)[\s\S]*terrafuse-no-such-package"):
        run_install(install_commands(env, sys.executable, None, requirements), lambda *a: None)


def test_cancel_stops_the_install(tmp_path) -> None:
    command = [[sys.executable, "-c", "import time\nfor i in range(100): print(i, flush=True); time.sleep(0.05)"]]
    with pytest.raises(InstallError, match="Cancelled"):
        run_install(command, lambda *a: None, is_cancelled=lambda: True)


def test_no_usable_base_python_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InstallError, match="No Python 3.11\\+ with venv"):
        find_base_python([str(tmp_path / "missing")])
