"""Imports run one way: no loop anywhere in backend/ or plugin/, and no import against the layers that
docs/architecture.md draws ("Layers of the backend").

Every import counts, those inside functions (imported on first use) and under ``TYPE_CHECKING`` too: an import
put off until a function runs still ties the two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: The backend's layers, top first. A module may import its own group and any group of a lower layer; groups of
#: one layer stay apart. A group is a module or a package prefix; the longest prefix that names a module wins.
BACKEND_LAYERS: tuple[tuple[str, ...], ...] = (
    ("backend.__main__",),
    ("backend.worker",),
    ("backend.jobs.",),  # every job: its run function and the helpers of its family
    ("backend.training", "backend.inference"),
    ("backend.models", "backend.output_folder"),
    ("backend.raster",),
    ("backend.hub",),  # where model files come from and where Terrafuse keeps its files
    # The small shared modules; the registry (backend/jobs/__init__.py) is here too: standard library only.
    ("backend.jobs", "backend.progress", "backend.protocol", "backend.atomic_files", "backend.stop_signals"),
    ("backend.errors",),
    ("backend",),  # backend/__init__.py: the version
)

#: The plugin's layers, top first, by the same rules; the backend's modules it may read (test_boundaries.py) are
#: its ground.
PLUGIN_LAYERS: tuple[tuple[str, ...], ...] = (
    ("plugin.plugin",),  # the plugin class: actions, dock, provider
    ("plugin.dock", "plugin.processing"),  # the dock and its sections; the Processing provider and algorithms
    # dialogs, panels and forms the dock opens or shows
    ("plugin.labels_panel", "plugin.diagnostics_dialog", "plugin.model_manager_dialog", "plugin.setup_task",
     "plugin.cluster_placement", "plugin.job_form", "plugin.dates_table", "plugin.prototype_identify",
     "plugin.first_use"),
    # what those build on: tasks around a job, map tools, layers, labels, settings, export of web layers
    ("plugin.tasks", "plugin.map_tools", "plugin.layers", "plugin.labels", "plugin.settings", "plugin.export"),
    # the worker client and the plain pieces: progress by phase, areas, the Qt shim, the backend's environment
    ("plugin.worker_client", "plugin.job_progress", "plugin.area", "plugin.qt_compat", "plugin.runtime"),
    ("plugin", "backend"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path, folders: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file of every module under ``folders`` (a package by its ``__init__.py``)."""
    return {module_name(path, root): path for folder in folders for path in sorted((root / folder).rglob("*.py"))}


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in it: ``from a import b`` reaches ``a.b`` when
    that is a module, else ``a``; relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "import a.b.c" of a name that is no module: its package
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph(root: Path, folders: Iterable[str]) -> dict[str, set[str]]:
    modules = modules_of(root, folders)
    known = set(modules)
    return {name: imports_of(path, root, known) - {name} for name, path in modules.items()}


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> tuple[int, str]:
    """(layer index, group) of ``module``: the longest group that is the module or a package above it (a group
    ending in "." holds only the modules under it)."""
    best: tuple[int, str] | None = None
    for level, groups in enumerate(layers):
        for group in groups:
            if group.endswith("."):
                matches = module.startswith(group)
            else:
                matches = module == group or module.startswith(group + ".")
            if matches and (best is None or len(group) > len(best[1])):
                best = (level, group)
    if best is None:
        raise AssertionError(f"{module} is on no layer: add it to the layers (and to docs/architecture.md)")
    return best


def imports_against_layers(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        level, group = layer_of(module, layers)
        for target in sorted(targets):
            target_level, target_group = layer_of(target, layers)
            if target_group != group and target_level <= level:
                wrong.append(f"{module} ({group}) imports {target} ({target_group})")
    return wrong


def test_no_import_loop_in_the_backend_or_the_plugin() -> None:
    loops = import_loops(import_graph(ROOT, ["backend", "plugin"]))
    assert not loops, "import loops:\n" + "\n".join(" <-> ".join(loop) for loop in loops)


def test_backend_imports_run_down_the_layers() -> None:
    wrong = imports_against_layers(import_graph(ROOT, ["backend"]), BACKEND_LAYERS)
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_plugin_imports_run_down_the_layers() -> None:
    graph = import_graph(ROOT, ["plugin", "backend"])
    plugin = {name: targets for name, targets in graph.items() if name.split(".")[0] == "plugin"}
    wrong = imports_against_layers(plugin, PLUGIN_LAYERS)
    assert not wrong, "plugin imports against its layers:\n" + "\n".join(wrong)


def test_every_job_runs_from_the_jobs_package() -> None:
    """The registry's targets all name a module of backend/jobs/ (one module per job or job family)."""
    from backend import jobs

    for spec in jobs.JOBS.values():
        module = spec.target.partition(":")[0]
        assert module.startswith("backend.jobs."), f"job {spec.name} runs {spec.target}, outside backend/jobs/"
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), spec.target


# -- the checker itself must see what it looks for ----------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("late", [False, True], ids=["at the top", "inside a function"])
def test_the_checker_finds_a_loop(tmp_path: Path, late: bool) -> None:
    back = "def f():\n    from ..training.job import default_device\n" if late else \
        "from ..training.job import default_device\n"
    _tree(tmp_path, {
        "backend/__init__.py": "",
        "backend/inference/__init__.py": "",
        "backend/inference/predictor.py": back,
        "backend/training/__init__.py": "",
        "backend/training/job.py": "from ..inference import predictor\n",
        "backend/training/loop.py": "import backend.training.job\n",
    })
    graph = import_graph(tmp_path, ["backend"])
    assert graph["backend.training.job"] == {"backend.inference.predictor"}
    assert graph["backend.training.loop"] == {"backend.training.job"}
    assert import_loops(graph) == [["backend.inference.predictor", "backend.training.job"]]


def test_the_checker_finds_an_import_against_the_layers(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "backend/__init__.py": "__version__ = '0'\n",
        "backend/errors.py": "",
        "backend/raster/__init__.py": "",
        "backend/raster/area.py": "from .. import __version__\nfrom ..errors import UserError\n",
        "backend/raster/inspect.py": "from ..models.cache import BACKBONES\n",
        "backend/models/__init__.py": "",
        "backend/models/cache.py": "from ..raster.area import read_area\n",
        "backend/hub/__init__.py": "",
        "backend/hub/manager.py": "from ..models import cache\n",
    })
    wrong = imports_against_layers(import_graph(tmp_path, ["backend"]), BACKEND_LAYERS)
    assert wrong == [
        "backend.hub.manager (backend.hub) imports backend.models.cache (backend.models)",
        "backend.raster.inspect (backend.raster) imports backend.models.cache (backend.models)",
    ]
