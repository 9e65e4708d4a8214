"""The layers stay apart: plugin/ never imports models, backend/ never imports QGIS or Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

MODEL_PACKAGES = {"torch", "torchvision", "diffusers", "timm", "transformers", "safetensors", "numpy",
                  "rasterio", "pyogrio", "shapely", "huggingface_hub"}
GUI_PACKAGES = {"qgis", "PyQt5", "PyQt6", "PySide2", "PySide6", "sip", "osgeo"}
# What the plugin may import from the backend: modules that use the standard library only (the job registry is
# the jobs package's __init__.py; the jobs under it are not for the plugin).
STDLIB_BACKEND_MODULES = ("jobs", "protocol", "errors", "progress")


def backend_module_file(module: str) -> Path:
    package = ROOT / "backend" / module / "__init__.py"
    return package if package.is_file() else ROOT / "backend" / f"{module}.py"


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Top-level names of every import in a file, relative imports resolved against the repository."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(root).parent.parts
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module or "<root>")
            # "from ..backend import jobs" reaches backend.jobs (a module) as much as backend itself.
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("plugin"), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_never_imports_models(path: Path) -> None:
    for name in imported_modules(path):
        assert name.split(".")[0] not in MODEL_PACKAGES, f"{path} imports {name}"
        parts = name.split(".")
        if parts[0] == "backend" and len(parts) > 1:
            assert parts[1] in STDLIB_BACKEND_MODULES, (
                f"{path} imports {name}: the plugin may only read the backend's standard-library modules"
            )
            # "from ..backend.jobs import JOBS" names backend.jobs.JOBS: the registry, not a job's module.
            job_module = ROOT / "backend" / "jobs" / f"{parts[2]}.py" if parts[1] == "jobs" and len(parts) > 2 else None
            assert job_module is None or not job_module.exists(), f"{path} imports the job module {name}"


@pytest.mark.parametrize("path", python_files("backend"), ids=lambda p: str(p.relative_to(ROOT)))
def test_backend_never_imports_qgis(path: Path) -> None:
    for name in imported_modules(path):
        assert name.split(".")[0] not in GUI_PACKAGES, f"{path} imports {name}"


@pytest.mark.parametrize("module", STDLIB_BACKEND_MODULES)
def test_backend_modules_the_plugin_reads_use_the_standard_library_only(module: str) -> None:
    stdlib = {"__future__", "importlib", "dataclasses", "typing", "json", "re", "threading", "time", "errno"}
    for name in imported_modules(backend_module_file(module)):
        parts = name.split(".")
        if parts[0] == "backend":
            assert len(parts) == 1 or parts[1] in STDLIB_BACKEND_MODULES, f"backend/{module}.py imports {name}"
        else:
            assert parts[0] in stdlib, f"backend/{module}.py imports {name}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scan itself must catch what it looks for, relative imports included."""
    fake = tmp_path / "plugin" / "probe.py"
    fake.parent.mkdir()
    fake.write_text("import torch\nfrom ..backend.raster import inspect\n", encoding="utf-8")
    names = imported_modules(fake, root=tmp_path)
    assert "torch" in names
    assert "backend.raster" in names
