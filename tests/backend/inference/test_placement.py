"""Actor size and count fitted to the nodes that exist (no Ray needed: the plan reads node resources)."""

from __future__ import annotations

import pytest

from backend.errors import UserError
from backend.inference.placement import NodeResources, plan


def cpu_nodes(*cpus: int, free: tuple[int, ...] | None = None) -> list[NodeResources]:
    free = cpus if free is None else free
    return [NodeResources(c, 0, f, 0) for c, f in zip(cpus, free)]


def test_five_four_cpu_nodes_get_five_actors_of_four_cpus() -> None:
    placement = plan(cpu_nodes(4, 4, 4, 4, 4))
    assert (placement.device, placement.actors, placement.threads) == ("cpu", 5, 4)
    assert placement.options == {"num_cpus": 4}
    assert placement.describe() == "5 actors of 4 CPUs"


def test_nodes_of_different_sizes_get_the_size_that_leaves_no_cpu_idle() -> None:
    assert (plan(cpu_nodes(1, 2, 4)).actors, plan(cpu_nodes(1, 2, 4)).threads) == (7, 1)
    assert (plan(cpu_nodes(16, 8)).actors, plan(cpu_nodes(16, 8)).threads) == (6, 4)
    assert (plan(cpu_nodes(2)).actors, plan(cpu_nodes(2)).threads) == (1, 2)
    assert (plan(cpu_nodes(0, 2)).actors, plan(cpu_nodes(0, 2)).threads) == (1, 2)  # a head without CPUs


def test_the_user_sets_actors_threads_or_both_without_a_cap() -> None:
    assert (plan(cpu_nodes(2), actors=2).actors, plan(cpu_nodes(2), actors=2).threads) == (2, 1)
    assert (plan(cpu_nodes(64, 64), threads=2).actors, plan(cpu_nodes(64, 64), threads=2).threads) == (64, 2)
    assert plan(cpu_nodes(4), actors=9, threads=1).actors == 9  # more than fit: the rest wait for room
    with pytest.raises(UserError, match="No node of the Ray cluster has 8 CPUs"):
        plan(cpu_nodes(4, 4), threads=8)
    with pytest.raises(UserError, match="at least 1"):
        plan(cpu_nodes(4), actors=0)


def test_a_shared_cluster_is_planned_on_its_free_cpus_or_on_all_when_none_is_free() -> None:
    assert plan(cpu_nodes(4, 4, free=(0, 4))).actors == 1
    assert plan(cpu_nodes(4, 4, free=(0, 0))).actors == 2  # waits for the running job to end


def test_a_gpu_cluster_gets_one_actor_per_gpu() -> None:
    nodes = [NodeResources(8, 2, 8, 2), NodeResources(8, 1, 8, 0)]
    placement = plan(nodes)
    assert (placement.device, placement.actors) == ("cuda", 2)  # the free GPUs
    assert placement.options == {"num_gpus": 1, "num_cpus": 1}
    assert plan(nodes, actors=3).actors == 3
    assert placement.describe() == "2 actors of 1 GPU"


def test_an_empty_cluster_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no live node"):
        plan([])
