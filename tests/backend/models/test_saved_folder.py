"""Saving a head or a SkySense model writes only into a folder that holds no other model, through names nobody
can plant."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backend.atomic_files import write_bytes, write_folder
from backend.errors import UserError
from backend.models.saved_folder import written_by_terrafuse
from backend.models.segmenter import SatDiFuser
from backend.models.skysense.model import SkySense
from tests.backend.conftest import write_untrained_head
from tests.backend.models.skysense.test_model import build


def diffusers_unet(folder: Path) -> dict[str, bytes]:
    """What a diffusers ``unet/`` folder holds: its own config.json (no Terrafuse marker), weights, notes."""
    folder.mkdir(parents=True)
    files = {"config.json": json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 96}).encode(),
             "diffusion_pytorch_model.safetensors": os.urandom(4096), "NOTES.md": b"fine-tuned on my fields"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def skysense() -> SkySense:
    return build().eval()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SatDiFuser:
    return SatDiFuser.from_pretrained(write_untrained_head(tmp_path_factory.mktemp("head")))


def save(model: SatDiFuser | SkySense, folder: Path) -> Path:
    return model.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["head", "skysense"])
def test_a_folder_with_a_foreign_config_is_never_replaced(kind, request, tmp_path):
    model = request.getfixturevalue(kind)
    unet = tmp_path / "unet"
    before = diffusers_unet(unet)
    with pytest.raises(UserError, match="holds a model Terrafuse did not write"):
        save(model, unet)
    assert contents(unet) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]  # no temporary folder left behind


@pytest.mark.parametrize("kind", ["head", "skysense"])
def test_a_folder_terrafuse_wrote_is_replaced_whole(kind, request, tmp_path):
    model = request.getfixturevalue(kind)
    folder = save(model, tmp_path / "model")
    assert written_by_terrafuse(folder)
    first = contents(folder)
    save(model, folder)
    assert contents(folder).keys() == first.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)


@pytest.mark.parametrize("kind", ["head", "skysense"])
def test_a_file_a_link_or_a_marker_of_another_tool_is_refused(kind, request, tmp_path):
    model = request.getfixturevalue(kind)
    (tmp_path / "a file").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        save(model, tmp_path / "a file")
    victim = tmp_path / "victim"
    diffusers_unet(victim)
    (tmp_path / "link").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        save(model, tmp_path / "link")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(UserError, match="did not write"):
        save(model, other)
    assert (other / "config.json").is_file()
    assert len(list(victim.iterdir())) == 3


def test_an_empty_or_new_folder_is_fine(skysense, tmp_path):
    (tmp_path / "empty").mkdir()
    assert SkySense.from_pretrained(save(skysense, tmp_path / "empty")).config == skysense.config
    assert save(skysense, tmp_path / "new" / "deeper").is_dir()


def test_planted_temporary_names_are_never_followed(skysense, tmp_path):
    """The old code wrote into '.<name>.partial-<pid>' and removed it first: a planted link there was followed."""
    victim = tmp_path / "victim"
    before = diffusers_unet(victim)
    for name in (f".model.partial-{os.getpid()}", f".model.old-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim, target_is_directory=True)
    save(skysense, tmp_path / "model")
    save(skysense, tmp_path / "model")
    assert contents(victim) == before
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_write_bytes_never_writes_through_a_planted_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    target = tmp_path / "index.json"
    for name in (f".index.json.{os.getpid()}", f".index.json.{os.getpid()}.tmp", ".index.json.partial"):
        (tmp_path / name).symlink_to(victim)
    write_bytes(target, b"{}")
    assert victim.read_text() == "mine"
    assert target.read_bytes() == b"{}"
    assert not target.is_symlink()


def test_a_failed_fill_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def fail(partial: Path) -> None:
        (partial / "half").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_folder(folder, fail)
    assert contents(folder) == {"config.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
