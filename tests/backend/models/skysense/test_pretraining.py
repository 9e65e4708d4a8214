"""Self-supervised pretraining (eq. 4-14) and the per-polygon classification."""

from __future__ import annotations

import pytest
import torch

from backend.models.skysense import SkySense
from backend.models.skysense.heads import PixelClassifier, classify_polygons, polygon_pool
from backend.models.skysense.losses import cluster_assignment, cross_modal_alignment
from backend.models.skysense.pretraining import SkySensePretrainer, augment_view, learn_prototypes, pretrain
from backend.progress import Progress
from tests.backend.models.skysense.tiny import make_inputs, micro_config


def test_one_pretraining_step_trains_the_student_and_moves_teacher_and_prototypes() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config(modalities=("s2", "s1")))
    trainer = SkySensePretrainer(model)
    inputs = make_inputs(("s2", "s1"), batch=2)
    g = torch.Generator().manual_seed(0)
    terms = trainer.losses_for(augment_view(inputs, g), augment_view(inputs, g))
    expected = {f"{b}_{lv}" for b in ("s2", "s1", "fused") for lv in ("pix", "obj", "img")}
    assert expected <= set(terms)
    assert {"mgcl", "align", "total"} <= set(terms)
    assert all(torch.isfinite(v).all() for k, v in terms.items() if not k.startswith("_"))
    terms["total"].backward()
    encoder_grad = model.encoders["s2"].backbone.patch_embed.proj.weight.grad
    assert encoder_grad is not None
    assert encoder_grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.teacher.parameters())
    teacher_before = next(trainer.teacher.parameters()).clone()
    prototypes_before = model.prototypes.prototypes.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    trainer.after_step(terms["_fused"], terms["_region"])
    assert not torch.equal(next(trainer.teacher.parameters()), teacher_before)
    changed = (model.prototypes.prototypes != prototypes_before).flatten(1).any(dim=1)
    assert set(changed.nonzero().flatten().tolist()) == set(terms["_region"].tolist())
    assert torch.equal(trainer.teacher.prototypes.prototypes, model.prototypes.prototypes)


@pytest.mark.slow
def test_pretraining_loop_reports_progress_and_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config(modalities=("hr", "s2")))
    steps = []
    history = pretrain(model, [make_inputs(("hr", "s2"), batch=2)], steps=6, learning_rate=1e-3,
                       progress=Progress(lambda done, total, _m: steps.append((done, total)), min_interval_s=0))
    assert steps[-1] == (6, 6)
    assert len(history) == 6
    assert history[-1]["total"] < history[0]["total"]


def test_learn_prototypes_updates_the_regions_seen() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config(modalities=("s1",)))
    inputs = make_inputs(("s1",), batch=2)
    before = model.prototypes.prototypes.clone()
    learn_prototypes(model, [inputs], epochs=2)
    regions = model.regions.index(inputs["lonlat"]).tolist()
    changed = (model.prototypes.prototypes != before).flatten(1).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(set(regions))


def test_cross_modal_alignment_prefers_aligned_features() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 8, 4, 4, generator=g)
    aligned = {"s2": a, "s1": a[:, :2] + 0.01 * torch.randn(2, 2, 8, 4, 4, generator=g)}
    shuffled = {"s2": a, "s1": torch.randn(2, 2, 8, 4, 4, generator=g)}
    assert cross_modal_alignment(aligned) < cross_modal_alignment(shuffled)
    assert cross_modal_alignment({"s2": a}) == 0


def test_object_clusters_follow_the_objects() -> None:
    pixels = torch.cat([torch.randn(30, 4) * 0.05 + torch.tensor([3.0, 0, 0, 0]),
                        torch.randn(30, 4) * 0.05 + torch.tensor([0, 3.0, 0, 0])])
    weights = cluster_assignment(pixels, num_clusters=2)
    assert weights.shape == (60, 2)
    owner = weights.argmax(dim=1)
    assert owner[:30].unique().numel() == 1
    assert owner[30:].unique().numel() == 1
    assert owner[0] != owner[30]


def test_polygon_pooling_and_classification() -> None:
    features = torch.zeros(1, 2, 2, 3)
    features[0, 0] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ids = torch.tensor([[[1, 1, 0], [2, 2, 1]]])
    pooled = polygon_pool(features, ids, num_polygons=3)
    assert torch.allclose(pooled[0], torch.tensor([(1 + 2 + 6) / 3, 0.0]))
    assert torch.allclose(pooled[1], torch.tensor([4.5, 0.0]))
    assert pooled[2].isnan().all()  # no cell: no guess
    weighted = polygon_pool(features, ids, 2, weights=torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]))
    assert torch.allclose(weighted[0], torch.tensor([3.5, 0.0]))
    head = PixelClassifier(2, 3)
    probabilities, top_p, top_i = classify_polygons(head, features, ids, 3, top_k=2)
    assert probabilities.shape == (3, 3)
    assert top_p.shape == (3, 2)
    assert top_i.shape == (3, 2)
    assert torch.allclose(probabilities[:2].sum(dim=1), torch.ones(2))
