"""The backend's own Python environment: create it, install the pinned requirements, adopt an existing one.

Nothing is ever installed into QGIS's Python: every pip runs as ``<environment>/bin/python -m pip``
in a virtual environment made without the system's site packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess  # nosec B404
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .lockfile import LockedRequirement, LockError, parse_lock
from .torch_build import TORCH_VERSION, TORCHVISION_VERSION, TorchBuild

PLUGIN_ROOT = Path(__file__).resolve().parent.parent.parent
REQUIREMENTS = PLUGIN_ROOT / "requirements" / "backend.txt"
#: pip never builds a package from source (a source build runs the package's own code at install time).
WHEELS_ONLY = ("--only-binary", ":all:")
#: Every file pip downloads must match a sha256 of the lock file.
HASHED = ("--require-hashes",)
#: Packages that come with the chosen torch build, not from the pinned list (their pins are CUDA-specific).
TORCH_FAMILY = re.compile(r"^(torch|torchvision|triton|nvidia-[\w-]+|cuda-[\w-]+)$", re.IGNORECASE)
#: The lock's entries for this environment, written into it before pip reads them.
LOCK_COPY = "terrafuse-requirements.txt"
#: The lock (requirements/backend.txt) is resolved for Python 3.11 and newer (numpy 2.4 needs 3.11).
MIN_PYTHON = (3, 11)

ProgressCallback = Callable[[int, int, str], None]


class InstallError(Exception):
    """The environment could not be made; the message ends with pip's last lines."""


@dataclass(frozen=True)
class BackendEnvironment:
    """A virtual environment folder for the backend."""

    path: Path

    @property
    def python(self) -> Path:
        if sys.platform == "win32":
            return self.path / "Scripts" / "python.exe"
        return self.path / "bin" / "python"

    @property
    def exists(self) -> bool:
        return self.python.is_file()


def split_requirements(text: str, source: str = "requirements/backend.txt"
                       ) -> Tuple[List[LockedRequirement], List[LockedRequirement]]:
    """The hashed lock's entries as (the torch family, the rest); an InstallError for an entry without a hash."""
    try:
        entries = parse_lock(text, source)
    except LockError as exc:
        raise InstallError(str(exc)) from exc
    family = [entry for entry in entries if TORCH_FAMILY.match(entry.name)]
    return family, [entry for entry in entries if not TORCH_FAMILY.match(entry.name)]


def base_python_candidates() -> List[str]:
    """Interpreters that can make a virtual environment; QGIS's own executable is not one of them."""
    names = ["python.exe"] if sys.platform == "win32" else ["python3", "python"]
    candidates = []
    for folder in (Path(sys.exec_prefix), Path(sys.exec_prefix) / "bin"):
        candidates += [str(folder / name) for name in names]
    candidates += [found for found in (shutil.which(name) for name in names) if found]
    seen: List[str] = []
    for candidate in candidates:
        if os.path.isfile(candidate) and candidate not in seen:
            seen.append(candidate)
    return seen


def find_base_python(candidates: Optional[List[str]] = None) -> str:
    """The first candidate that is Python 3.11 or newer with venv; an InstallError says what was tried."""
    candidates = base_python_candidates() if candidates is None else candidates
    check = "import sys, venv; print('%d.%d' % sys.version_info[:2])"
    for candidate in candidates:
        try:
            # A known interpreter path, an argument list, no shell.
            out = subprocess.run([candidate, "-c", check], capture_output=True, text=True,  # nosec B603
                                 timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        major, minor = (int(v) for v in out.split("."))
        if (major, minor) >= MIN_PYTHON:
            return candidate
    tried = ", ".join(candidates) or "none found"
    raise InstallError(f"No Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ with venv to build the backend from "
                       f"(tried: {tried}). Install Python 3, or point Terrafuse at an existing environment.")


def install_commands(environment: BackendEnvironment, base_python: str, build: Optional[TorchBuild],
                     requirements: Path = REQUIREMENTS) -> List[List[str]]:
    """The commands that make the environment, in order (each an argument list, run without a shell).

    ``build`` None leaves torch out (an environment that has it already, or a test). Every pip takes wheels
    only (``--only-binary :all:``): nothing is built from source, so no package's build script runs. The
    lock's entries are copied into the environment's folder (``LOCK_COPY``) and installed with
    ``--require-hashes``: every file must match a sha256 of the lock. PyPI's own torch ("default" build) is
    part of that; a build from PyTorch's index (CUDA 12.x, CPU) is checked by pip against the sha256 that
    index publishes beside each wheel, which the lock does not pin (docs/architecture.md, "The backend's
    environment").
    """
    python = str(environment.python)
    commands: List[List[str]] = []
    if not environment.exists:
        commands.append([base_python, "-m", "venv", str(environment.path)])
    family, rest = split_requirements(requirements.read_text(encoding="utf-8"), str(requirements))
    if build is not None and build.index_url:
        # torch and its CUDA libraries from PyTorch's index for that build; nothing else from there.
        commands.append([python, "-m", "pip", "install", *WHEELS_ONLY, f"torch=={TORCH_VERSION}",
                         f"torchvision=={TORCHVISION_VERSION}", "--index-url", build.index_url])
    elif build is not None:
        rest = family + rest
    if rest:
        environment.path.mkdir(parents=True, exist_ok=True)
        copy = environment.path / LOCK_COPY
        copy.write_text("".join(entry.as_line() + "\n" for entry in rest), encoding="utf-8")
        commands.append([python, "-m", "pip", "install", *WHEELS_ONLY, *HASHED, "-r", str(copy)])
    return commands


def describe_pip_line(line: str) -> Optional[str]:
    """A short progress message for the pip output lines worth showing."""
    line = line.strip()
    for prefix in ("Collecting ", "Downloading ", "Installing collected packages", "Successfully installed"):
        if line.startswith(prefix):
            return line[:160]
    return None


def run_install(commands: List[List[str]], on_progress: ProgressCallback,
                is_cancelled: Callable[[], bool] = lambda: False, on_line: Callable[[str], None] = lambda _: None,
                env: Optional[dict] = None) -> None:
    """Run the commands one after the other, reporting progress; stops at the first failure or a cancel."""
    total = len(commands)
    for index, command in enumerate(commands):
        shown = " ".join([Path(command[0]).name, *command[1:4]])
        on_progress(index, total, f"step {index + 1} of {total}: {shown}")
        # Our own command list (interpreters and pip), never a shell.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # nosec B603
                                   text=True, env=env, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        tail: List[str] = []
        for line in process.stdout or ():
            on_line(line.rstrip())
            tail = (tail + [line.rstrip()])[-15:]
            message = describe_pip_line(line)
            if message:
                on_progress(index, total, message)
            if is_cancelled():
                process.kill()
                process.wait()
                raise InstallError("Cancelled; run Set up backend again to finish (finished steps are kept)")
        if process.wait() != 0:
            raise InstallError(f"'{' '.join(command[:4])} …' failed (exit code {process.returncode}):\n"
                               + "\n".join(tail))
    on_progress(total, total, "the backend's environment is ready")
