"""Sizing the Ray actor pool for a cluster (pure: no Ray here).

One actor per GPU (or several sharing each GPU) when the cluster has GPUs and the
job may use them; otherwise several CPU actors sharing the cores, each with its own
torch threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import InputError

CORES_PER_CPU_ACTOR = 1
"""Default CPU pool: one actor per this many cores, each with that many torch threads (why one:
the Ray rows of bench/RESULTS.md)."""


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
) -> PoolPlan:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs present and ``device`` not ``cpu``: ``per_gpu`` actors per GPU (``workers``
    caps the total), each with ``num_gpus=1/per_gpu`` so Ray pins it to one device and
    packs ``per_gpu`` of them on each. Otherwise ``workers``
    CPU actors (default one per :data:`CORES_PER_CPU_ACTOR` cores) sharing the cores:
    ``threads`` each (default cores // actors) and a matching CPU reservation so actors
    never oversubscribe a node.

    >>> plan_pool({"CPU": 8.0, "GPU": 2.0}, None)
    PoolPlan(actors=2, num_cpus=1.0, num_gpus=1.0, threads=1)
    >>> plan_pool({"CPU": 16.0, "GPU": 1.0}, None, per_gpu=4)
    PoolPlan(actors=4, num_cpus=1.0, num_gpus=0.25, threads=1)
    >>> plan_pool({"CPU": 4.0}, 2)
    PoolPlan(actors=2, num_cpus=2.0, num_gpus=0.0, threads=2)
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
        return PoolPlan(count, num_cpus=min(1.0, cpus / count), num_gpus=1.0 / per_gpu, threads=threads or 1)
    if device.startswith("cuda"):
        raise InputError(f"--device {device}: the Ray cluster has no GPUs")
    count = workers or max(1, int(cpus) // CORES_PER_CPU_ACTOR)
    per_actor = threads or max(1, int(cpus) // count)
    return PoolPlan(count, num_cpus=min(float(per_actor), cpus / count), num_gpus=0.0, threads=per_actor)
