"""The set-up installs by hash: every lock file entry carries sha256 digests, and every pip takes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from terrafuse_under_test.plugin.runtime.lockfile import LockError, canonical_name, parse_lock
from terrafuse_under_test.plugin.runtime.torch_build import TORCH_VERSION, TORCHVISION_VERSION

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
LOCKS = ("backend", "dev", "qgis-test", "lock-tools")
SHA256 = re.compile(r"^\s*--hash=sha256:[0-9a-f]{64}\s*\\?$")


def _recipe_lines() -> list[str]:
    return [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]


@pytest.mark.parametrize("name", LOCKS)
def test_every_pin_of_the_lock_files_has_a_sha256(name: str) -> None:
    text = (REQUIREMENTS / f"{name}.txt").read_text()
    entries = parse_lock(text, name)
    # Read once more line by line, without the parser: each pin is followed by its own hash lines.
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    pins = [i for i, line in enumerate(lines) if not line.startswith((" ", "\t"))]
    assert len(pins) == len(entries) > 0
    for start, end in zip(pins, [*pins[1:], len(lines)]):
        assert "==" in lines[start], lines[start]
        assert end - start > 1, f"{lines[start]} has no hash"
        assert all(SHA256.match(line) for line in lines[start + 1:end]), lines[start]


@pytest.mark.parametrize("name", LOCKS)
def test_every_top_level_requirement_is_in_its_lock(name: str) -> None:
    locked = {entry.name for entry in parse_lock((REQUIREMENTS / f"{name}.txt").read_text(), name)}
    wanted = [re.split(r"[\s\[=<>!;~]", line, maxsplit=1)[0]
              for line in (REQUIREMENTS / f"{name}.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    missing = [requirement for requirement in wanted if canonical_name(requirement) not in locked]
    assert not missing, f"requirements/{name}.txt is older than its .in file; run 'make lock'"


def test_the_lock_pins_the_torch_the_plugin_set_up_installs() -> None:
    pins = {entry.name: entry.version for entry in parse_lock((REQUIREMENTS / "backend.txt").read_text())}
    assert pins["torch"] == TORCH_VERSION
    assert pins["torchvision"] == TORCHVISION_VERSION


def test_the_qgis_test_environment_never_pulls_numpy_or_pyqt() -> None:
    names = {entry.name for entry in parse_lock((REQUIREMENTS / "qgis-test.txt").read_text())}
    assert not names & {"numpy", "pyqt5", "pyqt5-sip", "pyqt6"}


def test_every_pip_of_the_makefile_installs_by_hash_and_wheels_only() -> None:
    text = (ROOT / "Makefile").read_text()
    locked = re.search(r"^PIP_LOCKED\s*:?=\s*(.+)$", text, re.MULTILINE)
    assert locked is not None
    assert "--require-hashes" in locked.group(1).split()
    assert "--only-binary :all:" in locked.group(1)
    installs = [line for line in _recipe_lines() if "pip install" in line or "PIP_LOCKED" in line]
    by_hash = [line for line in installs if "$(PIP_LOCKED)" in line]
    assert len(by_hash) >= 4  # backend, dev, the QGIS test environment, the lock tool
    for line in installs:
        if "$(PIP_LOCKED)" in line:
            assert re.search(r"-r requirements/[\w-]+\.txt", line), line
        else:
            # The one other pip: the checkout itself, editable, nothing downloaded (no deps, no build isolation).
            assert line.endswith("--no-deps --no-build-isolation -e ."), line
    qgis = [line for line in by_hash if "QGIS_VENV" in line]
    assert qgis
    assert all("--no-deps" in line for line in qgis)


def test_an_entry_without_a_hash_or_a_pin_is_refused() -> None:
    good = "shapely==2.2.0 ; python_full_version >= '3.11' \\\n    --hash=sha256:" + "a" * 64 + "\n"
    assert parse_lock(good)[0].marker == "python_full_version >= '3.11'"
    with pytest.raises(LockError, match="has no sha256 hash"):
        parse_lock(good + "numpy==2.4.6\n")
    with pytest.raises(LockError, match="not pinned"):
        parse_lock("numpy>=2 --hash=sha256:" + "b" * 64 + "\n")
    with pytest.raises(LockError, match="unexpected option"):
        parse_lock("numpy==2.4.6 --hash=md5:" + "c" * 32 + "\n")
