"""The on-disk feature cache: hits and misses, keys that change with what the features depend on, the
size bound with least-recently-used eviction, an index that survives the process, and a subfolder of its own:
a user's files in the cache folder are never adopted, evicted or written through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from rasterio.windows import Window

from backend.errors import UserError
from backend.training.feature_cache import FEATURES_SUBFOLDER, FeatureCache, raster_identity, tile_key

CONFIG = {"backbone_sha256": "a" * 64, "timesteps": [1, 100], "blocks": ["resnet", "attn1"], "levels": [0, 1, 2, 3],
          "bands": [3, 2, 1], "band_low": [0.0] * 3, "band_high": [1.0] * 3}


def features(seed: int, side: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 8, side, side, generator=generator), torch.randn(1, 4, side // 2, side // 2,
                                                                         generator=generator)]


def test_a_stored_tile_is_read_back_and_an_unknown_one_misses(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    stored = features(0)
    cache.put("k1", stored)
    read = cache.get("k1")
    assert read is not None
    assert [t.dtype for t in read] == [torch.float32, torch.float32]
    for a, b in zip(read, stored):
        assert a.shape == b.shape
        assert torch.equal(a, b.to(torch.float16).to(torch.float32))  # stored as float16
    assert cache.get("k2") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_key_changes_with_raster_window_and_feature_configuration(tmp_path: Path) -> None:
    raster = tmp_path / "r.tif"
    raster.write_bytes(b"x" * 10)
    identity = raster_identity(raster)
    key = tile_key(identity, Window(0, 0, 128, 128), CONFIG)
    assert key == tile_key(raster_identity(raster), Window(0, 0, 128, 128), dict(CONFIG))
    assert key != tile_key(identity, Window(128, 0, 128, 128), CONFIG)
    for name, value in (("backbone_sha256", "b" * 64), ("timesteps", [1]), ("band_high", [2.0] * 3),
                        ("bands", [1, 2, 3]), ("levels", [3])):
        assert key != tile_key(identity, Window(0, 0, 128, 128), {**CONFIG, name: value}), name
    stat = raster.stat()
    os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the raster was rewritten
    assert key != tile_key(raster_identity(raster), Window(0, 0, 128, 128), CONFIG)


def test_the_least_recently_used_tiles_are_evicted_at_the_size_bound(tmp_path: Path) -> None:
    probe = FeatureCache(tmp_path / "probe")
    probe.put("x", features(0))
    size = probe.total_bytes
    cache = FeatureCache(tmp_path / "cache", max_bytes=int(2.5 * size))
    cache.put("a", features(1))
    cache.put("b", features(2))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("c", features(3))
    assert "b" not in cache
    assert "a" in cache
    assert "c" in cache
    assert cache.evicted == 1
    assert cache.total_bytes <= cache.max_bytes
    assert sorted(p.stem for p in cache.folder.glob("*.safetensors")) == ["a", "c"]
    assert cache.folder == tmp_path / "cache" / FEATURES_SUBFOLDER


def test_a_tile_larger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_bytes=100)
    cache.put("big", features(0))
    assert "big" not in cache
    assert cache.total_bytes == 0


def test_the_index_and_its_order_survive_the_process(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for i, key in enumerate(("a", "b", "c")):
        cache.put(key, features(i))
    cache.get("a")
    cache.flush()
    again = FeatureCache(tmp_path, max_bytes=cache.total_bytes - 1)
    assert len(again) == 3
    again.evict()
    assert "b" not in again
    assert "a" in again


def test_a_corrupt_file_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("a", features(0))
    (cache.folder / "a.safetensors").write_bytes(b"not safetensors")
    assert cache.get("a") is None
    assert not (cache.folder / "a.safetensors").exists()


@pytest.mark.parametrize("max_bytes", [0])
def test_a_zero_bound_caches_nothing(tmp_path: Path, max_bytes: int) -> None:
    cache = FeatureCache(tmp_path, max_bytes=max_bytes)
    cache.put("a", features(0))
    assert cache.get("a") is None


def users_files(folder: Path) -> dict[str, bytes]:
    """A user's own models and notes in the folder given as --cache-dir."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"my_model.safetensors": os.urandom(50_000), f"{'ab' * 32}.safetensors": os.urandom(50_000),
             "index.json": b'{"entries": {"my_model": {"bytes": 1, "last_access": 0}}}', "notes.txt": b"mine"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_a_users_files_in_the_cache_folder_are_never_adopted_or_evicted(tmp_path: Path) -> None:
    before = users_files(tmp_path)
    cache = FeatureCache(tmp_path, max_bytes=1)  # a bound that evicts everything it may
    assert len(cache) == 0
    cache.put("a" * 64, features(0))
    cache.evict()
    cache.flush()
    again = FeatureCache(tmp_path, max_bytes=1)
    again.evict()
    assert len(again) == 0
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, FEATURES_SUBFOLDER])


def test_only_tiles_the_cache_wrote_are_evicted(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("a" * 64, features(0))
    planted = cache.folder / "user.safetensors"  # a file someone put into the cache's own subfolder
    planted.write_bytes(b"mine")
    again = FeatureCache(tmp_path, max_bytes=0)
    assert len(again) == 1
    again.evict()
    assert not (again.folder / f"{'a' * 64}.safetensors").exists()
    assert planted.read_bytes() == b"mine"


def test_a_subfolder_that_is_not_the_caches_is_refused_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / FEATURES_SUBFOLDER
    before = users_files(foreign)
    with pytest.raises(UserError, match="not Terrafuse's feature cache"):
        FeatureCache(tmp_path, max_bytes=0)
    assert {name: (foreign / name).read_bytes() for name in before} == before
    link_root = tmp_path / "elsewhere"
    link_root.mkdir()
    (link_root / FEATURES_SUBFOLDER).symlink_to(foreign, target_is_directory=True)
    with pytest.raises(UserError, match="not a folder Terrafuse's feature cache made"):
        FeatureCache(link_root)


def test_planted_links_at_temporary_and_tile_names_are_never_written_through(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"the user's weights")
    key = "c" * 64
    for name in (f".{key}.{os.getpid()}.partial", f".index.json.{os.getpid()}", f"{key}.safetensors"):
        (cache.folder / name).symlink_to(victim)
    cache.put(key, features(1))
    assert victim.read_bytes() == b"the user's weights"
    assert not (cache.folder / f"{key}.safetensors").is_symlink()
    assert cache.get(key) is not None
    assert json.loads((cache.folder / "index.json").read_text())["format"] == "terrafuse-feature-cache"
