"""Fixtures of the model manager's tests: a models folder of its own and huggingface-hub pointed at a
stand-in hub."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("TERRAFUSE_MODELS_DIR", str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return folder


