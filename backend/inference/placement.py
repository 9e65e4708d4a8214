"""How many Ray actors a job starts and how large each is, from the nodes that exist.

A GPU cluster gets one actor per GPU (1 GPU and 1 CPU each). A CPU cluster gets actors of ``threads``
CPUs (torch threads), as many as fit the nodes: ``sum(node_cpus // threads)``. The default size is the
largest one up to :data:`DEFAULT_THREADS` that leaves the fewest CPUs idle, so that five 4-CPU nodes get
five actors of 4 threads, and nodes of 1, 2 and 4 CPUs seven actors of 1 thread. The CPUs counted are
those free when the job starts (a cluster shared with a running job), or all of them when none is free
(the job then waits for the other to end, and says so). The user may set the actor count, the threads
per actor, or both; there is no fixed cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError

#: Largest default actor size in CPUs (torch threads): beyond it a CPU actor gains little per thread.
DEFAULT_THREADS = 4


@dataclass(frozen=True)
class NodeResources:
    """One live node's CPUs and GPUs, all and free now."""

    cpus: int
    gpus: int
    free_cpus: int
    free_gpus: int


@dataclass(frozen=True)
class Placement:
    """The plan: the actors' device, their count, threads and the Ray resources each asks for."""

    device: str
    actors: int
    threads: int
    options: dict[str, Any]

    def describe(self) -> str:
        size = "1 GPU" if self.device == "cuda" else f"{self.threads} CPU{'s' * (self.threads != 1)}"
        return f"{self.actors} actor{'s' * (self.actors != 1)} of {size}"


def cluster_nodes() -> list[NodeResources]:
    """The live nodes of the Ray this process is connected to (free resources where Ray tells them)."""
    import ray

    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except Exception:  # noqa: BLE001 - Ray Client and older Rays: totals only
        free = None
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        total = node.get("Resources", {})
        available = free.get(node.get("NodeID"), total) if free is not None else total
        nodes.append(NodeResources(int(total.get("CPU", 0)), int(total.get("GPU", 0)),
                                   int(available.get("CPU", 0)), int(available.get("GPU", 0))))
    return nodes


def plan(nodes: list[NodeResources], actors: int | None = None, threads: int | None = None) -> Placement:
    """The actors for ``nodes`` (see the module's docstring); ``actors``/``threads`` as the user set them."""
    if not nodes:
        raise UserError("The Ray cluster has no live node")
    if actors is not None and actors < 1 or threads is not None and threads < 1:
        raise UserError("Actors and threads per actor must be at least 1")
    gpus = sum(n.gpus for n in nodes)
    if gpus:
        free = sum(n.free_gpus for n in nodes)
        count = actors or free or gpus
        cpus = 1 if all(n.cpus for n in nodes if n.gpus) else 0
        return Placement("cuda", count, 1, {"num_gpus": 1, "num_cpus": cpus})
    largest = max(n.cpus for n in nodes)
    if largest < 1:
        raise UserError("The Ray cluster has no CPU to run on")
    if threads is not None and threads > largest:
        raise UserError(f"No node of the Ray cluster has {threads} CPUs for an actor (the largest has {largest})")
    room = [n.free_cpus for n in nodes] if any(n.free_cpus for n in nodes) else [n.cpus for n in nodes]
    if threads is None and actors is not None:
        # The user's actor count, each as large as an even share of the room allows.
        threads = max(1, min(largest, sum(room) // actors))
    if threads is None:
        sizes = range(1, min(DEFAULT_THREADS, largest) + 1)
        threads = max(sizes, key=lambda t: (t * sum(c // t for c in room), t))
    fit = sum(c // threads for c in room) or sum(n.cpus // threads for n in nodes)
    return Placement("cpu", actors or max(1, fit), threads, {"num_cpus": threads})
