"""The SkySense jobs with a model in the official conventions (what the converter makes of the official
checkpoints): its input statistics replace the area's percentiles, and its prototypes, which no official file
carries, are flagged until they are learned on the area."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend import jobs
from backend.jobs.classify import run_classify
from backend.jobs.prototypes import run_prototypes
from backend.models.skysense import SkySense
from backend.models.skysense.config import S2_BANDS, official_conventions
from backend.progress import Progress
from tests.backend.models.skysense.tiny import CLASSES, micro_config
from tests.backend.test_skysense_jobs import BOX, UTM, _pattern, _write


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("official-scene")
    s2 = [_write(root / f"S2_{d}.tif", _pattern((10, 40, 40), i, 3000).astype(np.uint16), UTM, BOX, list(S2_BANDS))
          for i, d in enumerate(("20230415", "20230610"))]
    torch.manual_seed(0)
    model = SkySense(official_conventions(micro_config(modalities=("s2",), classes=CLASSES)))
    folder = model.save_pretrained(root / "model")
    return {"s2": s2, "model": str(folder)}


def _params(job: str, scene: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    return jobs.get(job).bind({"model": scene["model"], "out": str(out), "s2": ",".join(scene["s2"]), **extra})


def test_the_official_statistics_normalise_the_inputs(official: dict[str, Any], tmp_path: Path) -> None:
    result = run_prototypes(_params("prototypes", official, tmp_path / "out", tile_px=20), Progress())
    used = result["provenance"]["normalisation"]["s2"]
    stats = SkySense.from_pretrained(official["model"]).config.encoders["s2"].normalisation
    assert used["statistics"]["source"].startswith("SkySense++")
    assert result["provenance"]["date_encoding"] == {"s2": True}
    assert result["provenance"]["prototype_regions"] == []
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    np.testing.assert_allclose(used["p2"], mean - std, rtol=1e-6)
    np.testing.assert_allclose(used["p98"], mean + std, rtol=1e-6)


def test_unlearned_prototypes_warn_until_learned_on_the_area(official: dict[str, Any], tmp_path: Path) -> None:
    mapped = run_prototypes(_params("prototypes", official, tmp_path / "map", tile_px=20), Progress())
    warning = next(w for w in mapped["warnings"] if "never learned" in w)
    assert "region 20 " in warning
    assert "--learn prototypes" in warning
    classified = run_classify(_params("classify", official, tmp_path / "classes", tile_px=20), Progress())
    assert any("never learned" in w and "geo-context" in w for w in classified["warnings"])

    saved = tmp_path / "learned"
    learned = run_prototypes(_params("prototypes", official, tmp_path / "learn", tile_px=20, learn="prototypes",
                                     epochs=2, save_model=str(saved)), Progress())
    assert not any("never learned" in w for w in learned["warnings"])
    assert SkySense.from_pretrained(saved).config.prototype_regions == [20]
    again = run_classify(_params("classify", official, tmp_path / "classes2", tile_px=20, model=str(saved)),
                         Progress())
    assert not any("never learned" in w for w in again["warnings"])


def test_the_command_line_prints_the_warnings(official: dict[str, Any], tmp_path: Path, capsys) -> None:
    from backend.__main__ import main

    code = main(["--quiet", "prototypes", "--model", official["model"], "--out", str(tmp_path / "out"), "--s2",
                 ",".join(official["s2"]), "--tile-px", "20"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: The prototypes of region 20 were never learned" in err
    assert "--learn prototypes --save-model FOLDER" in err
