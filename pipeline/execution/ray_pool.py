"""Running jobs' blocks on Ray: a pool of long-lived actors, one per GPU or N on CPU.

:class:`ActorPool` starts the actors once and serves the blocks of any number of
scenes, one after another or interleaved (:mod:`pipeline.execution.pool_dispatch`);
:class:`RayBlockRunner` is its one-scene case (a pool started for one job and stopped
after it). The driver has already ingested each scene and planned its blocks
(:func:`pipeline.job.steps.prepare`). Each actor
(:class:`~pipeline.execution.block_worker.BlockWorker`) loads the model once, reopens
each scene's stores from its configuration at its first block there
(:func:`pipeline.job.plan.attach`, no re-ingest), and for every block it is handed
reads the footprint, computes, and writes the block's own chunks to the output store
itself; only a few numbers come back.
Tiles and probabilities never pass through the driver or Ray's object store, so the
work folder must be where every node can open it: object storage (a URL), or a
shared mount. The driver's object-storage settings (``AWS_*``) go to the actors.

Hand-out is bounded: at most :data:`IN_FLIGHT_PER_ACTOR` blocks per actor. An actor
runs two calls at once (a threaded actor): while one computes under the actor's
compute lock, the next one reads its footprint — that is the prefetch.

Faults. A block whose actor dies or whose node leaves (``RayActorError``) is handed
to another actor and counted as a retry in the progress report; the dead actor is
restarted by Ray (``max_restarts``) and rejoins the pool once it answers again.
Blocks are idempotent (same bytes, own chunks, marked done only after writing), so
a block redone after a worker wrote half of it, or all of it, changes nothing. A
driver killed mid-run leaves the done record; the next run skips those blocks.
Errors the block's input causes (unreadable / corrupt chunks, any exception raised
by the block code itself) fail that scene at once naming the block; a block whose
worker dies :data:`~pipeline.execution.block_queue.MAX_ATTEMPTS` times fails its scene
too instead of retrying forever. Other scenes of the pool go on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.execution.block_queue import MAX_ATTEMPTS, BlockIndex
from pipeline.execution.block_worker import BlockReport, BlockWorker
from pipeline.execution.heap_allocator import allocator_environment
from pipeline.execution.openmp_spinning import openmp_environment
from pipeline.execution.pool_dispatch import Dispatcher, SceneRun
from pipeline.execution.pool_plan import PoolPlan, plan_pool
from pipeline.execution.progress import Progress
from pipeline.job.config import SegmentConfig
from pipeline.job.plan import Job
from pipeline.stores.object_storage_settings import object_storage_environment

IN_FLIGHT_PER_ACTOR = 2
"""Blocks handed to one actor at a time: one computing, one reading ahead."""
MAX_RESTARTS = 4
DESCRIBE_TIMEOUT_S = 30.0
"""How long :meth:`ActorPool.describe` waits for the actors to answer."""
STALL_TIMEOUT_S = 600.0
"""With no worker alive and nothing in flight for this long, the run fails."""


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (else ``$RAY_ADDRESS``), or start a private local Ray.

    A run joins a cluster only when told to: a Ray that happens to be running on this
    machine (another command's private one, a ``ray start``) is never joined, so its
    end cannot take this run down (DESIGN.md, invariant 10). A private Ray belongs to
    this process and stops when the process ends, so a process that runs many scenes
    (a watch) starts it once. Ray's own logging is kept to errors and worker output
    stays off the driver's terminal.
    """
    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", include_dashboard=False, **quiet)


def worker_environment() -> dict[str, str]:
    """What each block worker's process starts with, on any node: the object-storage settings,
    how its OpenMP threads wait, and its heap allocator (each module says why)."""
    return {**object_storage_environment(), **openmp_environment(), **allocator_environment()}


class ActorPool:
    """Long-lived actors serving the blocks of every scene submitted to them, until closed.

    Sized once, for the Ray it runs on, from the first scene's settings (``workers``,
    ``device``, ``threads``): the scenes of one pool share their engine options.
    ``run`` may be called from several threads at once; their blocks interleave.
    """

    def __init__(
        self,
        plan: PoolPlan,
        device: str,
        in_flight_per_actor: int = IN_FLIGHT_PER_ACTOR,
        max_attempts: int = MAX_ATTEMPTS,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        on_block: Callable[[BlockReport], None] | None = None,
    ):
        self.plan = plan
        self.max_attempts = max_attempts
        actor_class = ray.remote(BlockWorker).options(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # a lost block is handed out again by the driver, visibly
            max_concurrency=in_flight_per_actor,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": worker_environment()},
        )
        gpu_share = plan.num_gpus if plan.uses_gpus else 1.0
        self.handles = [actor_class.remote(device, plan.threads, gpu_share) for _ in range(plan.actors)]
        self.dispatcher = Dispatcher(self.handles, in_flight_per_actor, stall_timeout_s, on_block)
        self._thread = threading.Thread(target=self.dispatcher.serve, name="gigaseg-pool", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, config: SegmentConfig, workers: int | None = None, **options: Any) -> ActorPool:
        """Join or start Ray (``config.ray_address``) and start a pool sized for it and ``config``."""
        connect(config.ray_address)
        workers = workers if workers is not None else config.workers
        plan = pool_plan_for(config, workers)
        return cls(plan, config.device, **options)

    def run(self, job: Job, progress: Progress | None = None) -> tuple[int, int]:
        """Compute and write every pending block of ``job``; returns (run, skipped). A ``BlockRunner``."""
        return self.run_scene(job, progress)[:2]

    def run_scene(self, job: Job, progress: Progress | None = None) -> tuple[int, int, int]:
        """Like :meth:`run`, and the number of blocks handed out again after a lost worker."""
        pending = job.store.pending(job.plan)
        skipped = job.plan.num_blocks - len(pending)
        if not pending:
            return 0, skipped, 0
        run = SceneRun(job, pending, progress, self.max_attempts)
        self.dispatcher.submit(run)
        try:
            run.wait()
        finally:
            job.timings["infer"] = time.perf_counter() - run.t0
        return len(pending), skipped, run.retries

    @property
    def actors(self) -> list[dict[str, Any]]:
        """Where each actor that answered runs, as it described itself when it did."""
        return list(self.dispatcher.described.values())

    def describe(self) -> list[dict[str, Any]]:
        """Each live actor's description now (what it has loaded, how many scenes it reopened)."""
        return ray.get([h.describe.remote() for h in self.handles], timeout=DESCRIBE_TIMEOUT_S)

    def close(self) -> None:
        """Stop the hand-out loop and the actors."""
        self.dispatcher.stop()
        self._thread.join(timeout=30)
        for h in self.handles:
            ray.kill(h, no_restart=True)


@dataclass
class RayBlockRunner:
    """Runs one job's pending blocks on a pool of its own; a ``BlockRunner`` for :func:`segment`.

    After a run, ``actors`` describes where each actor ran, ``block_nodes`` which
    node wrote which block, ``retries`` how many blocks were handed out again.
    ``on_block`` is called on the driver with each finished block's report.
    """

    workers: int | None = None
    address: str | None = None
    in_flight_per_actor: int = IN_FLIGHT_PER_ACTOR
    max_attempts: int = MAX_ATTEMPTS
    stall_timeout_s: float = STALL_TIMEOUT_S
    actors: list[dict[str, Any]] = field(default_factory=list)
    block_nodes: dict[BlockIndex, str] = field(default_factory=dict)
    retries: int = 0
    pool: PoolPlan | None = None
    on_block: Callable[[BlockReport], None] | None = None

    def __call__(self, job: Job, progress: Progress | None = None) -> tuple[int, int]:
        """Compute and write every pending block of ``job``; returns (run, skipped)."""
        if not job.store.pending(job.plan):
            return 0, job.plan.num_blocks
        connect(self.address or job.config.ray_address)
        workers = self.workers if self.workers is not None else job.config.workers
        self.pool = pool_plan_for(job.config, workers)
        pool = ActorPool(
            self.pool,
            job.config.device,
            self.in_flight_per_actor,
            self.max_attempts,
            self.stall_timeout_s,
            on_block=self._block_done,
        )
        try:
            run, skipped, self.retries = pool.run_scene(job, progress)
        finally:
            self.actors = _every_actor(pool)
            pool.close()
        return run, skipped

    def _block_done(self, report: BlockReport) -> None:
        self.block_nodes[report.index] = report.node_id
        if self.on_block is not None:
            self.on_block(report)


def pool_plan_for(config: SegmentConfig, workers: int | None) -> PoolPlan:
    """The pool for ``config`` on the connected cluster, its reservations fitted to the live nodes."""
    nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    return plan_pool(
        ray.cluster_resources(), workers, config.device, config.threads, config.workers_per_gpu, nodes
    )


def _every_actor(pool: ActorPool) -> list[dict[str, Any]]:
    """Each actor's description; one still starting when the blocks ran out is asked now (bounded wait)."""
    if len(pool.actors) == len(pool.handles):
        return pool.actors
    try:
        return pool.describe()
    except Exception:  # an actor that is gone or does not answer: report those that did
        return pool.actors


__all__ = ["ActorPool", "RayBlockRunner", "connect"]
