"""Running a job's blocks on Ray: a pool of long-lived actors, one per GPU or N on CPU.

The driver (:class:`RayBlockRunner`) has already ingested the scene and planned the
blocks (:func:`pipeline.job.steps.prepare`). Each actor reopens the same stores from
the configuration (:func:`pipeline.job.plan.attach`, no re-ingest), loads the model
once, and for every block it is handed reads the footprint, computes, and writes
the block's own chunks to the output store itself; only a few numbers come back.
Tiles and probabilities never pass through the driver or the object store, so the
work folder must be on a filesystem every node sees.

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
by the block code itself) fail the run at once naming the block; a block whose
worker dies :data:`MAX_ATTEMPTS` times fails the run too instead of retrying forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from pipeline.engine.device import select_device
from pipeline.errors import InputError
from pipeline.execution.progress import Progress
from pipeline.job.config import SegmentConfig
from pipeline.tiling.blocks import Block

log = logging.getLogger("gigaseg")

IN_FLIGHT_PER_ACTOR = 2
"""Blocks handed to one actor at a time: one computing, one reading ahead."""
MAX_ATTEMPTS = 3
"""Times a block may lose its worker before the run gives up on it."""
CORES_PER_CPU_ACTOR = 1
"""Default CPU pool: one actor per this many cores, each with that many torch threads. Measured on
2 cores (bench/RESULTS.md): two 1-thread actors match the in-process engine; one 2-thread actor
is 1.7× slower."""
MAX_RESTARTS = 4
STALL_TIMEOUT_S = 600.0
"""With no worker alive and nothing in flight for this long, the run fails."""

BlockIndex = tuple[int, ...]


class BlockFailedError(InputError):
    """A block that cannot be computed: its input is unreadable, or it keeps killing workers."""


# -- planning the pool (pure) ------------------------------------------------


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
    resources: Mapping[str, float], workers: int | None, device: str = "auto", threads: int | None = None
) -> PoolPlan:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs present and ``device`` not ``cpu``: one actor per GPU (``workers`` caps it),
    each with ``num_gpus=1`` so Ray pins it to its own device. Otherwise ``workers``
    CPU actors (default one per :data:`CORES_PER_CPU_ACTOR` cores) sharing the cores:
    ``threads`` each (default cores // actors) and a matching CPU reservation so actors
    never oversubscribe a node.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, float(resources.get("CPU", 1)))
    if workers is not None and workers <= 0:
        raise ValueError("a Ray pool needs at least one worker (0 means in-process, not Ray)")
    if gpus and device != "cpu":
        count = min(workers or gpus, gpus)
        return PoolPlan(count, num_cpus=min(1.0, cpus / count), num_gpus=1.0, threads=threads or 1)
    if device.startswith("cuda"):
        raise InputError(f"--device {device}: the Ray cluster has no GPUs")
    count = workers or max(1, int(cpus) // CORES_PER_CPU_ACTOR)
    per_actor = threads or max(1, int(cpus) // count)
    return PoolPlan(count, num_cpus=min(float(per_actor), cpus / count), num_gpus=0.0, threads=per_actor)


class BlockQueue:
    """Blocks waiting to be handed out, and how often each lost its worker (no Ray here)."""

    def __init__(self, indices: Iterable[BlockIndex], max_attempts: int = MAX_ATTEMPTS):
        self._waiting: deque[BlockIndex] = deque(indices)
        self.total = len(self._waiting)
        self.max_attempts = max_attempts
        self.lost_count: dict[BlockIndex, int] = {}
        self.done: set[BlockIndex] = set()

    def take(self) -> BlockIndex | None:
        """The next block to hand out, or None when none is waiting."""
        return self._waiting.popleft() if self._waiting else None

    def has_waiting(self) -> bool:
        """Whether a block is waiting to be handed out."""
        return bool(self._waiting)

    def finished(self, index: BlockIndex) -> None:
        """A block was written and marked done."""
        self.done.add(index)

    def lost(self, index: BlockIndex, reason: str) -> None:
        """A block's worker went away: queue it again first, or fail it after too many tries."""
        n = self.lost_count.get(index, 0) + 1
        self.lost_count[index] = n
        if n >= self.max_attempts:
            raise BlockFailedError(
                f"block {list(index)}: its worker was lost {n} times ({reason}); giving up"
            )
        self._waiting.appendleft(index)

    @property
    def complete(self) -> bool:
        """Whether every block is done."""
        return len(self.done) == self.total


# -- the actor --------------------------------------------------------------


@dataclass(frozen=True)
class BlockReport:
    """What an actor returns for a block it wrote: small, never the data."""

    index: BlockIndex
    tiles: int
    seconds: float
    pid: int
    node_id: str


class BlockWorker:
    """A pool member: the job reopened, the model on its device, one block at a time computing.

    Wrapped by ``ray.remote`` in :meth:`RayBlockRunner.start`; plain class so its logic
    can be read and called without Ray.
    """

    def __init__(self, config: SegmentConfig, threads: int):
        from pipeline.execution.in_process import predictor_for
        from pipeline.execution.process_memory import bound_process_memory
        from pipeline.job.plan import attach

        bound_process_memory()
        torch.set_num_threads(max(1, threads))
        self.job = attach(config)
        # On a GPU actor Ray exposes exactly its GPU (CUDA_VISIBLE_DEVICES): any cuda
        # name means that one. "auto" checks torch.cuda.is_available(), so a GPU that
        # Ray only *advertises* (no CUDA on the machine) leaves the actor on CPU.
        name = "cuda" if config.device.startswith("cuda") else config.device
        self.device = select_device(name)
        self.predictor = predictor_for(self.job, self.device)
        self.blocks: dict[BlockIndex, Block] = {b.index: b for b in self.job.plan}
        self._compute = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: node, pid, assigned GPU ids, torch device, threads."""
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    def run(self, index: BlockIndex) -> BlockReport:
        """Read, compute and write one block; report how it went."""
        from pipeline.execution.in_process import compute_block

        t0 = time.perf_counter()
        block = self.blocks[tuple(index)]
        try:
            raw, valid = self.job.read(block.footprint)
        except Exception as exc:
            raise BlockFailedError(
                f"{self.job.scene.path}: block {list(block.index)} (pixels {block.footprint}) "
                f"cannot be read: {type(exc).__name__}: {exc}"
            ) from None
        with self._compute:
            before = self.predictor.tiles_run
            output = compute_block(self.job, block, self.predictor, read=lambda _region: (raw, valid))
            tiles = self.predictor.tiles_run - before
        self.job.store.write_block(block, output)
        return BlockReport(
            block.index, tiles, time.perf_counter() - t0, os.getpid(), ray.get_runtime_context().get_node_id()
        )


# -- the driver --------------------------------------------------------------


def connect(address: str | None = None) -> bool:
    """Join Ray: ``address``, else ``RAY_ADDRESS``, else a cluster running here, else start one.

    Returns whether a new local Ray was started. Ray's own logging is kept to
    errors and worker output stays off the driver's terminal.
    """
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return False
    try:
        ray.init(address="auto", **quiet)
        return False
    except ConnectionError:
        pass
    ray.init(include_dashboard=False, **quiet)
    return True


def _first_line_of_cause(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class RayBlockRunner:
    """Runs a job's pending blocks on an actor pool; a ``BlockRunner`` for :func:`segment`.

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

    def __call__(self, job: Any, progress: Progress | None = None) -> tuple[int, int]:
        """Compute and write every pending block of ``job``; returns (run, skipped)."""
        pending = job.store.pending(job.plan)
        skipped = job.plan.num_blocks - len(pending)
        if not pending:
            return 0, skipped
        connect(self.address or job.config.ray_address)
        workers = self.workers if self.workers is not None else job.config.workers
        self.pool = plan_pool(ray.cluster_resources(), workers, job.config.device, job.config.threads)
        actor_class = ray.remote(BlockWorker).options(
            num_cpus=self.pool.num_cpus,
            num_gpus=self.pool.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # a lost block is handed out again by the driver, visibly
            max_concurrency=self.in_flight_per_actor,
            scheduling_strategy="SPREAD",
        )
        handles = [actor_class.remote(job.config, self.pool.threads) for _ in range(self.pool.actors)]
        t0 = time.perf_counter()
        try:
            self._dispatch(job, handles, pending, progress, t0)
        finally:
            for h in handles:
                ray.kill(h, no_restart=True)
        job.timings["infer"] = time.perf_counter() - t0
        return len(pending), skipped

    def _dispatch(
        self, job: Any, handles: list, pending: list[Block], progress: Progress | None, t0: float
    ) -> None:
        queue = BlockQueue([b.index for b in pending], self.max_attempts)
        pixels = {b.index: b.num_pixels for b in pending}
        load = dict.fromkeys(range(len(handles)), 0)
        # Blocks go only to actors that answered a ping: a call queued on an actor that
        # never came up (its node left before it started) would wait forever.
        ready: set[int] = set()
        dead: set[int] = set()
        in_flight: dict[ray.ObjectRef, tuple[int, BlockIndex]] = {}
        probes: dict[ray.ObjectRef, int] = {h.describe.remote(): a for a, h in enumerate(handles)}
        described: dict[int, dict[str, Any]] = {}
        tiles = 0
        idle_since: float | None = None

        while not queue.complete:
            for a in sorted(ready, key=lambda a: load[a]):
                while load[a] < self.in_flight_per_actor and queue.has_waiting():
                    index = queue.take()
                    in_flight[handles[a].run.remote(index)] = (a, index)
                    load[a] += 1
            waiting_on = list(in_flight) + list(probes)
            if len(dead) == len(handles):
                raise BlockFailedError("every Ray worker died; the done blocks are kept, run again to resume")
            if not in_flight:
                idle_since = idle_since or time.perf_counter()
                if time.perf_counter() - idle_since > self.stall_timeout_s:
                    raise BlockFailedError(
                        f"no Ray worker has been available for {self.stall_timeout_s:.0f} s; "
                        "the done blocks are kept, run again to resume"
                    )
            else:
                idle_since = None
            done_refs, _ = ray.wait(waiting_on, num_returns=1, timeout=1.0)
            for ref in done_refs:
                if ref in probes:
                    a = probes.pop(ref)
                    try:
                        described[a] = ray.get(ref)
                        ready.add(a)
                    except ActorDiedError as exc:
                        if exc.actor_init_failed:
                            raise BlockFailedError(
                                f"a Ray worker could not start: {_first_line_of_cause(exc)}"
                            ) from None
                        dead.add(a)  # restarts exhausted: never comes back
                    except RayActorError:
                        probes[handles[a].describe.remote()] = a
                    continue
                a, index = in_flight.pop(ref)
                load[a] -= 1
                try:
                    report: BlockReport = ray.get(ref)
                except RayTaskError as exc:
                    cause = exc.cause
                    if isinstance(cause, InputError):
                        raise type(cause)(str(cause)) from None
                    raise BlockFailedError(
                        f"block {list(index)} failed: {type(cause).__name__}: {cause}"
                    ) from exc
                except RayActorError as exc:
                    if isinstance(exc, ActorDiedError) and exc.actor_init_failed:
                        raise BlockFailedError(
                            f"a Ray worker could not start: {_first_line_of_cause(exc)}"
                        ) from None
                    self.retries += 1
                    queue.lost(index, type(exc).__name__)
                    if progress is not None:
                        progress.retry(f"block {list(index)}: its worker was lost, handing it out again")
                    if a in ready:
                        ready.discard(a)
                        probes[handles[a].describe.remote()] = a
                    continue
                queue.finished(index)
                self.block_nodes[index] = report.node_id
                tiles += report.tiles
                if "first_block" not in job.timings:
                    job.timings["first_block"] = time.perf_counter() - t0
                if progress is not None:
                    progress.tiles_done(report.tiles)
                    progress.block_done(pixels[index])
                if self.on_block is not None:
                    self.on_block(report)
        job.timings["tiles"] = tiles
        self.actors = list(described.values())


def run_blocks_on_ray(job: Any, progress: Progress | None = None) -> tuple[int, int]:
    """``BlockRunner`` with the job's own ``workers`` / ``ray_address`` settings."""
    return RayBlockRunner()(job, progress)


__all__ = [
    "BlockFailedError",
    "BlockQueue",
    "BlockReport",
    "BlockWorker",
    "PoolPlan",
    "RayBlockRunner",
    "connect",
    "plan_pool",
    "run_blocks_on_ray",
]
