"""Sinkhorn-Knopp, Geo-Context Prototype Learning (eq. 11-13), the geo-context integration (eq. 3) and the
region grid."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from backend.errors import UserError
from backend.models.skysense import SkySense
from backend.models.skysense.ema import ema_update, make_teacher
from backend.models.skysense.prototypes import GeoContextIntegration, PrototypeBank
from backend.models.skysense.regions import RegionGrid
from backend.models.skysense.sinkhorn import sinkhorn_knopp
from tests.backend.models.skysense.tiny import make_inputs, micro_config

K_CLUSTERS, DIM, PER_REGION = 4, 16, 8


def clustered_features(n_per_cluster: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K clear clusters (the same centres in every call, far apart), small noise drawn from ``seed``."""
    centres = F.normalize(torch.randn(K_CLUSTERS, DIM, generator=torch.Generator().manual_seed(1234)), dim=-1) * 3.0
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K_CLUSTERS).repeat_interleave(n_per_cluster)
    return centres[labels] + 0.1 * torch.randn(len(labels), DIM, generator=g), labels


def collapse_prone_bank(per_region: int, seed: int = 0) -> PrototypeBank:
    """All prototypes start almost equal, next to one cluster: the set-up where an assignment without the
    uniform constraint moves them together and they collapse into one."""
    bank = PrototypeBank(num_regions=2, per_region=per_region, dim=DIM)
    features, _ = clustered_features(1, seed)
    g = torch.Generator().manual_seed(seed + 1)
    bank.prototypes[1] = features[0] + 1e-3 * torch.randn(per_region, DIM, generator=g)
    return bank


def assign(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    return (F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T).argmax(dim=1)


def test_sinkhorn_meets_the_uniform_constraint() -> None:
    scores = 0.1 * torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    scores[:, 0] += 0.5  # every sample prefers cluster 0 (cosine-like scores)
    q = sinkhorn_knopp(scores, iterations=20)
    assert torch.allclose(q.sum(dim=1), torch.ones(40), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((5,), 8.0), rtol=0.1)  # N / K each
    assert (q.argmax(dim=1) == 0).float().mean() < 0.4


@pytest.mark.parametrize("per_region", [K_CLUSTERS, 2 * K_CLUSTERS])
def test_prototypes_do_not_collapse_on_clustered_data(per_region: int) -> None:
    bank = collapse_prone_bank(per_region)
    untouched = bank.prototypes[0].clone()
    for step in range(60):
        features, _ = clustered_features(32, seed=100 + step)
        bank.update(features, region=1, momentum=0.8)
    features, labels = clustered_features(200, seed=7)
    assignment = assign(features, bank.prototypes[1])
    used = torch.bincount(assignment, minlength=per_region)
    assert (used > 0).sum() >= K_CLUSTERS
    share = used[used > 0].double() / len(assignment)
    assert -(share * share.log()).sum() > 0.9 * math.log(K_CLUSTERS)  # at least as spread as K even clusters
    owner = {}
    for p in used.nonzero().flatten().tolist():  # every prototype in use stands for one cluster
        counts = torch.bincount(labels[assignment == p], minlength=K_CLUSTERS)
        assert counts.max() >= 0.9 * counts.sum(), f"prototype {p} mixes clusters: {counts.tolist()}"
        owner[p] = int(counts.argmax())
    assert set(owner.values()) == set(range(K_CLUSTERS))  # and every cluster has one
    if per_region == K_CLUSTERS:  # one prototype per cluster: each cluster maps to its own dominant one
        dominant = [int(torch.bincount(assignment[labels == k], minlength=per_region).argmax())
                    for k in range(K_CLUSTERS)]
        assert len(set(dominant)) == K_CLUSTERS
        for k, p in enumerate(dominant):
            assert (assignment[labels == k] == p).float().mean() >= 0.8
    assert torch.equal(bank.prototypes[0], untouched)  # other regions stay as they were
    assert bank.prototypes.isfinite().all()


def test_prototype_update_is_an_ema_of_assigned_means() -> None:
    bank = PrototypeBank(1, 2, 2)
    bank.prototypes[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[2.0, 0.0], [2.0, 0.1], [0.0, 4.0], [0.1, 4.0]])
    bank.update(features, region=0, momentum=0.5, sinkhorn_iters=10, epsilon=0.01)
    expected = 0.5 * torch.tensor([[1.0, 0.0], [0.0, 1.0]]) + 0.5 * torch.tensor([[2.0, 0.05], [0.05, 4.0]])
    assert torch.allclose(bank.prototypes[0], expected, atol=1e-3)
    with pytest.raises(ValueError, match="momentum"):
        bank.update(features, region=0, momentum=1.0)


def test_geo_context_attends_to_the_nearest_prototypes() -> None:
    prototypes = torch.tensor([[[10.0, 0.0], [0.0, 10.0]]])
    fused = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])
    combined, weights = GeoContextIntegration()(fused, prototypes)
    assert combined.shape == (1, 2, 4)
    assert torch.equal(combined[..., :2], fused)
    assert weights[0, 0, 0] > 0.99
    assert weights[0, 1, 1] > 0.99
    assert torch.allclose(combined[0, 0, 2:], prototypes[0, 0], atol=0.1)


def test_region_grid_index_formula() -> None:
    grid = RegionGrid(64, 64)
    assert grid.num_regions == 4096
    assert grid.cell_deg == (2.8125, 5.625)
    lonlat = torch.tensor([[-180.0, 90.0], [0.0, 0.0], [179.99, -90.0], [190.0, 10.0], [-170.0, 10.0]])
    index = grid.index(lonlat).tolist()
    assert index[0] == 0
    assert index[1] == 32 * 64 + 32
    assert index[2] == 4095
    assert index[3] == index[4]  # longitudes wrap
    small = RegionGrid(3, 5)
    for region in range(small.num_regions):
        lon, lat = small.centre(region)
        assert int(small.index(torch.tensor([lon, lat]))) == region
    assert small.bounds(0) == (-180.0, 30.0, -108.0, 90.0)
    with pytest.raises(UserError, match="swapped"):
        grid.index(torch.tensor([45.0, 120.0]))


def test_the_model_uses_the_prototypes_of_the_sample_region() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config(modalities=("s2",))).eval()
    inputs = make_inputs(("s2",), batch=2)
    region = model.regions.index(inputs["lonlat"])
    assert region[0] != region[1]
    with torch.no_grad():
        before = model(inputs)
        model.prototypes.prototypes[region[1]] += 1.0
        after = model(inputs)
    assert torch.equal(before["features"][0], after["features"][0])
    assert not torch.allclose(before["features"][1], after["features"][1])
    assert torch.equal(after["region"], region)


def test_ema_teacher_follows_the_student() -> None:
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.weight.clone()
    ema_update(teacher, student, momentum=0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)
