"""Prototype maps (Fig. 5): assignment to the most similar prototype of the region, the similarity band,
what an identify click lists, and the class each prototype is nearest to."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from backend.models.skysense import SkySense
from backend.models.skysense.prototype_map import (
    nearest_class_per_prototype,
    prototype_map,
    prototype_map_from_similarity,
    prototype_palette,
    similarities_at,
)
from tests.backend.models.skysense.tiny import CLASSES, make_inputs, micro_config


def test_each_pixel_gets_the_most_similar_prototype_of_its_region() -> None:
    prototypes = torch.zeros(2, 3, 2)
    prototypes[1] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    fused = torch.tensor([[[[2.0, 0.0]], [[0.1, 3.0]]]])  # (1, d=2, h=1, w=2): pixels (2, 0.1) and (0, 3)
    result = prototype_map(fused, prototypes, torch.tensor([1]))
    assert result.assignment.tolist() == [[[0, 1]]]
    expected = F.cosine_similarity(torch.tensor([[2.0, 0.1], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(result.similarity[0, 0], expected)


def test_model_output_gives_the_same_map() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config(modalities=("s2", "s1"), classes=CLASSES)).eval()
    with torch.no_grad():
        out = model(make_inputs(("s2", "s1"), batch=2))
    direct = prototype_map(out["fused"], model.prototypes.prototypes, out["region"])
    from_output = prototype_map_from_similarity(out["prototype_similarity"], out["region"])
    assert direct.assignment.shape == (2, 8, 8)
    assert direct.similarity.shape == (2, 8, 8)
    assert torch.equal(direct.assignment, from_output.assignment)
    assert torch.allclose(direct.similarity, from_output.similarity, atol=1e-6)
    assert int(direct.assignment.max()) < model.config.prototypes_per_region
    click = similarities_at(out["prototype_similarity"], row=3, col=4, sample=1)
    assert len(click) == model.config.prototypes_per_region
    assert max(click) == float(from_output.similarity[1, 3, 4])
    classes, probability = nearest_class_per_prototype(model.prototypes.prototypes[int(out["region"][0])],
                                                       model.head.class_weights, model.head.linear.bias)
    assert classes.shape == (model.config.prototypes_per_region,)
    assert int(classes.max()) < len(CLASSES)
    assert ((probability > 0) & (probability <= 1)).all()


def test_nearest_class_follows_the_head() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 5.0, 0.0], [0.0, 5.0, 0.0, 5.0]])  # 3 classes over 2d
    classes, probability = nearest_class_per_prototype(prototypes, weights)
    assert classes.tolist() == [1, 2]
    assert (probability > 0.9).all()
    classes_d, _ = nearest_class_per_prototype(prototypes, weights[:, :2])
    assert classes_d.tolist() == [1, 2]


def test_palette_has_distinct_colours() -> None:
    colours = prototype_palette(100)
    assert len(set(colours)) == 100
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
