"""Bad input, as a hostile user gives it, through the command line: every case of issue 18 and every item of
the brief's bad-input list. Each case asserts the exit code, the key words of the one line (or of the
warning), and that nothing outside the job's own files changed (a refused job changes nothing at all).

The cases run the command line's ``main`` (what ``terrafuse`` calls) in this process, the segment cases with the
pixelwise stand-in model (no backbone); the train cases are refused before any backbone loads. A full disk and
a read-only folder are real: a tmpfs mounted in a user and mount namespace of a process of their own
(``unshare -rm``), skipped where the system allows no such namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from backend import __main__ as cli
from backend.errors import user_message
from backend.output_folder import FolderLock
from backend.raster.band_check import band_statistics
from backend.stop_signals import kept_signal_handlers
from tests.backend.rasters import write_area, write_raster
from tests.backend.segment_stand_in import smooth_image, use_stand_in, write_head_config
from tests.backend.test_train_segment import LABELS, pixel_box, write_labels
from tests.conftest import BACKEND_PYTHON, ROOT

#: The command line with the pixelwise stand-in in place of the head's backbone.
STAND_IN_CLI = """
import sys
import pytest
from backend import __main__ as cli
from tests.backend.segment_stand_in import use_stand_in
use_stand_in(pytest.MonkeyPatch())
sys.exit(cli.main(["--quiet"] + sys.argv[1:]))
"""
SEGMENT_OUTPUTS = {"classes.tif", "classes.tif.aux.xml", "classes.qml", "classes.gpkg", "classes_polygons.qml",
                   "confidence.tif", "confidence.qml"}


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return done.returncode == 0


NAMESPACES = _namespaces_work()
#: Locks the test holds while the case runs (another job writing into the folder).
HELD: list[FolderLock] = []


@dataclass
class Case:
    """A command line (``{tmp}`` stands for the case's folder), what it must answer, and what it may change."""

    args: list[str]
    code: int
    words: tuple[str, ...]
    setup: Callable[[Path], None] = lambda tmp: None
    changes: set[str] = field(default_factory=set)  # paths (relative) that a successful job may create
    mount: str | None = None  # tmpfs options for {tmp}/mnt (read-only, tiny)
    check: Callable[[Path, dict[str, Any] | None], None] = lambda tmp, result: None


def scene16() -> np.ndarray:
    """A 16-bit scene like a Sentinel-2 L1C one: digital numbers 300..2340."""
    return smooth_image(160, 160).astype(np.uint16) * 8 + 300


def _common(tmp: Path) -> None:
    write_raster(tmp / "scene.tif", scene16())
    head = write_head_config(tmp / "head", low=float(np.percentile(scene16(), 2)),
                             high=float(np.percentile(scene16(), 98)))
    config = json.loads((head / "config.json").read_text())
    config["training"] = {"band_statistics": band_statistics(str(tmp / "scene.tif"), [1, 2, 3])}
    (head / "config.json").write_text(json.dumps(config))


def segment(*extra: str, image: str = "{tmp}/scene.tif", out: str = "{tmp}/out") -> list[str]:
    return ["segment", "--image", image, "--model", "{tmp}/head", "--out", out, *extra]


def _file(path: str, text: str = "mine") -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text(text)
    return setup


def _copy_scene(to: str, transform: Callable[[np.ndarray], np.ndarray] | None = None, **kwargs: Any
                ) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / to).parent.mkdir(parents=True, exist_ok=True)
        data = scene16()
        write_raster(tmp / to, transform(data) if transform else data, **kwargs)
    return setup


def _locked(tmp: Path) -> None:
    (tmp / "out").mkdir()
    HELD.append(FolderLock.acquire(tmp / "out", "segment"))  # another job, writing there now


def _labels(labels: list[tuple[str, shapely.Geometry]]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        write_labels(tmp / "labels.gpkg", labels)
    return setup


def _warned(words: str) -> Callable[[Path, dict[str, Any] | None], None]:
    def check(tmp: Path, result: dict[str, Any] | None) -> None:
        assert result is not None
        assert any(words in w for w in result["warnings"]), result["warnings"]
    return check


def _no_warning(tmp: Path, result: dict[str, Any] | None) -> None:
    assert result is not None
    assert result["warnings"] == []


TRAIN = ["train", "--image", "{tmp}/scene.tif", "--labels", "{tmp}/labels.gpkg", "--no-preview"]
OUTSIDE = [("water", pixel_box(5000, 5000, 5050, 5050)), ("marsh", pixel_box(6000, 6000, 6050, 6050))]

CASES: dict[str, Case] = {
    # -- the output folder (issue 18, item 2) -------------------------------------------------------------
    "out-is-a-file": Case(segment(), 2, ("is a file",), _file("out")),
    "input-named-like-an-output-in-out": Case(segment(image="{tmp}/out/classes.tif"), 2,
                                              ("holds an input", "classes.tif"), _copy_scene("out/classes.tif")),
    "out-holds-the-users-files": Case(segment(), 2, ("not this job's outputs", "README.md", "--overwrite"),
                                      _file("out/README.md")),
    "overwrite-keeps-the-users-files": Case(segment("--overwrite"), 0, (), _file("out/README.md"),
                                            {f"out/{n}" for n in SEGMENT_OUTPUTS}, check=_no_warning),
    "a-rerun-replaces-its-own-outputs": Case(segment(), 0, (), _file("out/classes.tif", "an older run's"),
                                             {f"out/{n}" for n in SEGMENT_OUTPUTS}),
    "two-jobs-in-one-folder": Case(segment(), 2, ("Another Terrafuse job", "segment"), _locked),
    "train-out-on-the-users-folder": Case([*TRAIN, "--out", "{tmp}/notes"], 2, ("not this job's outputs", "notes.txt"),
                                          lambda tmp: (_labels(LABELS)(tmp), _file("notes/notes.txt")(tmp))),
    "train-out-is-a-file": Case([*TRAIN, "--out", "{tmp}/labels.gpkg"], 2, ("is a file",), _labels(LABELS)),
    "read-only-folder": Case(segment(out="{tmp}/mnt/out"), 2, ("read-only",), mount="ro,size=1m"),
    "full-disk": Case(segment(out="{tmp}/mnt/out"), 2, ("Not enough free space", "needed"), mount="size=64k"),
    "full-disk-before-training": Case([*TRAIN, "--out", "{tmp}/mnt/head"], 2, ("Not enough free space",),
                                      _labels(LABELS), mount="size=1m"),
    # -- inputs (issue 18, item 3) ------------------------------------------------------------------------
    "missing-raster": Case(segment(image="{tmp}/nowhere.tif"), 2, ("Input not found", "nowhere.tif")),
    "empty-gpkg-area": Case(segment("--aoi", "{tmp}/area.gpkg"), 2, ("empty file", "0 bytes"), _file("area.gpkg", "")),
    "empty-gpkg-labels": Case([*TRAIN, "--out", "{tmp}/h"], 2, ("empty file", "0 bytes"), _file("labels.gpkg", "")),
    "corrupt-head-config": Case(segment(), 2, ("config.json",), _file("head/config.json", '{"format": "terr')),
    # -- the model checks its input (issue 18, item 1) ----------------------------------------------------
    "reflectance-for-a-16-bit-head": Case(segment(image="{tmp}/reflectance.tif"), 2,
                                          ("another scale", "times smaller", "--rescale-per-area"),
                                          _copy_scene("reflectance.tif", lambda d: (d / 10000).astype(np.float32))),
    "reflectance-rescaled-per-area": Case(segment("--rescale-per-area", image="{tmp}/reflectance.tif"), 0, (),
                                          _copy_scene("reflectance.tif", lambda d: (d / 10000).astype(np.float32)),
                                          {f"out/{n}" for n in SEGMENT_OUTPUTS}, check=_no_warning),
    "8-bit-for-a-16-bit-head": Case(segment(image="{tmp}/byte.tif"), 0, (),
                                    _copy_scene("byte.tif", lambda d: np.minimum(d // 8, 255).astype(np.uint8)),
                                    {f"out/{n}" for n in SEGMENT_OUTPUTS}, check=_warned("clipped")),
    # -- the brief's bad-input list -----------------------------------------------------------------------
    "no-crs": Case(segment(image="{tmp}/nocrs.tif"), 2, ("no CRS",), _copy_scene("nocrs.tif", crs=None)),
    "area-outside": Case(segment("--aoi", "{tmp}/far.gpkg"), 2, ("outside",),
                         lambda tmp: write_area(tmp / "far.gpkg", [pixel_box(9000, 9000, 9100, 9100)],
                                                "EPSG:32618") and None),
    "all-nodata": Case(segment(image="{tmp}/nodata.tif"), 2, ("no valid pixel",),
                       _copy_scene("nodata.tif", lambda d: np.zeros_like(d), nodata=0)),
    "one-band-for-a-3-band-head": Case(segment(image="{tmp}/one.tif"), 2, ("other bands", "'bands'"),
                                       _copy_scene("one.tif", lambda d: d[:1])),
    "complex-values": Case(segment(image="{tmp}/complex.tif"), 2, ("complex",),
                           _copy_scene("complex.tif", lambda d: d.astype(np.complex64))),
    "labels-of-one-class": Case([*TRAIN, "--out", "{tmp}/h"], 2, ("two classes",),
                                _labels([item for item in LABELS if item[0] == "marsh"])),
    "labels-outside-the-raster": Case([*TRAIN, "--out", "{tmp}/h"], 2, ("outside",), _labels(OUTSIDE)),
    "twelve-bands-without-a-choice": Case(segment(image="{tmp}/twelve.tif"), 0, (),
                                          _copy_scene("twelve.tif", lambda d: np.concatenate([d] * 4)),
                                          {f"out/{n}" for n in SEGMENT_OUTPUTS}),
}


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` (the resume store's cache aside): size, modification time, first bytes."""
    files = {}
    for path in folder.rglob("*"):
        if path.is_file() and "cache" not in path.relative_to(folder).parts and "mnt" not in path.parts:
            stat = path.stat()
            files[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, path.read_bytes()[:64])
    return files


def run_command_line(args: list[str], tmp: Path, mount: str | None, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``terrafuse ARGS``: in this process (the same ``main`` the console
    script calls), or in a process of its own with a tmpfs mounted at ``{tmp}/mnt``."""
    monkeypatch.setenv("TERRAFUSE_CACHE_DIR", str(tmp / "cache"))
    if mount is None:
        use_stand_in(monkeypatch)
        capsys.readouterr()
        with kept_signal_handlers():
            code = cli.main(["--quiet", *args])
        out, err = capsys.readouterr()
        return code, out, err
    (tmp / "mnt").mkdir()
    command = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {mount} tmpfs "$0" && exec "$@"', str(tmp / "mnt"),
               BACKEND_PYTHON, "-c", STAND_IN_CLI, *args]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
                          check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    if case.mount and not NAMESPACES:
        pytest.skip("no user and mount namespaces here (unshare -rm) for a real tmpfs")
    _common(tmp_path)
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    try:
        code, stdout, stderr = run_command_line(args, tmp_path, case.mount, monkeypatch, capsys)
        after = snapshot(tmp_path)
    finally:
        while HELD:
            HELD.pop().release()
    assert code == case.code, stderr[-3000:]
    result = None
    if case.code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr  # one line, no traceback
        assert lines[0].startswith("error: ")
        for word in case.words:
            assert word in lines[0], lines[0]
        assert stdout == ""
    else:
        result = json.loads(stdout)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed <= case.changes, f"changed outside the job's own files: {sorted(changed - case.changes)}"
    if case.code == 0:
        assert {p for p in after if p.startswith("out/")} == {p for p in before if p.startswith("out/")} | \
            case.changes  # the user's files kept, the job's outputs there, no lock or temporary file left
    case.check(tmp_path, result)


@pytest.mark.parametrize(("error", "words"), [
    (OSError(28, "No space left on device", "/data/out/classes.tif"), ("disk is full", "/data/out/classes.tif")),
    (RuntimeError("TIFFAppendToStrip:Write error at scanline 3 ... No space left on device"), ("disk is full",)),
    (PermissionError(13, "Permission denied", "/data/out"), ("permission denied",)),
    (OSError(30, "Read-only file system", "/mnt/out"), ("read-only",)),
    (RuntimeError("sqlite3_step() failed: database is locked"), ("locked by another program",)),
])
def test_failures_met_while_writing_are_one_line(error: Exception, words: tuple[str, ...]) -> None:
    """What a job meets in the middle (the disk fills up after the checks, a GeoPackage QGIS holds), as
    the OS, GDAL or SQLite word it, wrapped or not: one line for the user."""
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("writing the outputs failed") from inner
    except RuntimeError as wrapped:
        message = user_message(wrapped)
    assert message is not None
    for word in words:
        assert word in message
    assert "\n" not in message
    assert user_message(RuntimeError("index 3 is out of bounds")) is None  # an internal error keeps its traceback
