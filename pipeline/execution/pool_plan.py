"""Sizing the Ray actor pool for a cluster (pure: no Ray here).

One actor per GPU (or several sharing each GPU) when the cluster has GPUs and the
job may use them; otherwise several CPU actors sharing the cores, each with its own
torch threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import InputError

CORES_PER_CPU_ACTOR = 1
"""Default CPU pool: one actor per this many cores, each with that many torch threads (why one:
the Ray rows of bench/RESULTS.md)."""


RESOURCE_UNIT = 1e-4
"""Ray counts fractional resources in units of 1/10,000: a reservation is rounded down to one."""


@dataclass(frozen=True)
class PoolPlan:
    """How many actors, and what each one asks Ray for."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    """torch intra-op threads inside each actor."""

    @property
    def uses_gpus(self) -> bool:
        """Whether each actor holds a GPU."""
        return self.num_gpus > 0


def plan_pool(
    resources: Mapping[str, float],
    workers: int | None,
    device: str = "auto",
    threads: int | None = None,
    per_gpu: int = 1,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> PoolPlan:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs present and ``device`` not ``cpu``: ``per_gpu`` actors per GPU (``workers``
    caps the total), each with ``num_gpus=1/per_gpu`` so Ray pins it to one device and
    packs ``per_gpu`` of them on each. Otherwise ``workers``
    CPU actors (default one per :data:`CORES_PER_CPU_ACTOR` cores) sharing the cores:
    ``threads`` each (default cores // actors) and a matching CPU reservation so actors
    never oversubscribe a node.

    ``nodes``: each live node's resources (``ray.nodes()``). The CPU reservation is then
    lowered where the cluster's share per actor would leave an actor with no node to
    start on (nodes of unequal size), so that every planned actor starts.

    >>> plan_pool({"CPU": 8.0, "GPU": 2.0}, None)
    PoolPlan(actors=2, num_cpus=1.0, num_gpus=1.0, threads=1)
    >>> plan_pool({"CPU": 16.0, "GPU": 1.0}, None, per_gpu=4)
    PoolPlan(actors=4, num_cpus=1.0, num_gpus=0.25, threads=1)
    >>> plan_pool({"CPU": 4.0}, 2)
    PoolPlan(actors=2, num_cpus=2.0, num_gpus=0.0, threads=2)
    >>> plan_pool({"CPU": 3.0}, 4, nodes=[{"CPU": 2.0}, {"CPU": 1.0}])  # 0.75 each: 3 would start
    PoolPlan(actors=4, num_cpus=0.6666, num_gpus=0.0, threads=1)
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, float(resources.get("CPU", 1)))
    if workers is not None and workers <= 0:
        raise ValueError("a Ray pool needs at least one worker (0 means in-process, not Ray)")
    if per_gpu < 1:
        raise ValueError(f"per_gpu must be ≥ 1, got {per_gpu}")
    if gpus and device != "cpu":
        slots = gpus * per_gpu
        count = min(workers or slots, slots)
        hosts = [(n.get("CPU", 0.0), int(n.get("GPU", 0)) * per_gpu) for n in nodes or [resources]]
        num_cpus = fitting_cpus([h for h in hosts if h[1] > 0], count, min(1.0, cpus / count))
        return PoolPlan(count, num_cpus=num_cpus, num_gpus=1.0 / per_gpu, threads=threads or 1)
    if device.startswith("cuda"):
        raise InputError(f"--device {device}: the Ray cluster has no GPUs")
    count = workers or max(1, int(cpus) // CORES_PER_CPU_ACTOR)
    per_actor = threads or max(1, int(cpus) // count)
    hosts = [(n.get("CPU", 0.0), None) for n in nodes or [{"CPU": cpus}]]
    num_cpus = fitting_cpus(hosts, count, min(float(per_actor), cpus / count))
    return PoolPlan(count, num_cpus=num_cpus, num_gpus=0.0, threads=per_actor)


def actors_held(hosts: Sequence[tuple[float, int | None]], num_cpus: float) -> int:
    """How many actors reserving ``num_cpus`` (> 0) each the nodes hold: (CPUs, at most this many actors).

    The actor bound is None where only CPUs count.

    >>> actors_held([(2.0, None), (1.0, None)], 0.75), actors_held([(8.0, 2)], 1.0)
    (3, 2)
    """
    held = 0
    for cpus, slots in hosts:
        fit = int(cpus / num_cpus + 1e-9)
        held += fit if slots is None else min(fit, slots)
    return held


def fitting_cpus(hosts: Sequence[tuple[float, int | None]], count: int, cap: float) -> float:
    """The largest CPU reservation ≤ ``cap``, in Ray's units, with which ``count`` actors fit on ``hosts``.

    The cap itself where it fits, or where nothing does (then Ray queues what cannot start).

    >>> fitting_cpus([(2.0, None), (1.0, None)], 4, 0.75)
    0.6666
    """
    candidates = {cap, *(cpus / k for cpus, _ in hosts for k in range(1, count + 1))}
    for value in sorted(candidates, reverse=True):
        units = math.floor(value / RESOURCE_UNIT + 1e-6)
        reservation = round(units * RESOURCE_UNIT, 4)
        if units >= 1 and reservation <= cap and actors_held(hosts, reservation) >= count:
            return reservation
    return cap
