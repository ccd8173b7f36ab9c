"""Running a job's blocks on Ray: a pool of long-lived actors, one per GPU or N on CPU.

The driver (:class:`RayBlockRunner`) has already ingested the scene and planned the
blocks (:func:`pipeline.job.steps.prepare`). Each actor
(:class:`~pipeline.execution.block_worker.BlockWorker`) reopens the same stores from
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
worker dies :data:`~pipeline.execution.block_queue.MAX_ATTEMPTS` times fails the run
too instead of retrying forever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from pipeline.errors import InputError
from pipeline.execution.block_queue import MAX_ATTEMPTS, BlockFailedError, BlockIndex, BlockQueue
from pipeline.execution.block_worker import BlockReport, BlockWorker
from pipeline.execution.pool_plan import PoolPlan, plan_pool
from pipeline.execution.progress import Progress
from pipeline.tiling.blocks import Block

IN_FLIGHT_PER_ACTOR = 2
"""Blocks handed to one actor at a time: one computing, one reading ahead."""
MAX_RESTARTS = 4
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


def _first_line_of_cause(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _cannot_start(exc: ActorDiedError) -> BlockFailedError:
    return BlockFailedError(f"a Ray worker could not start: {_first_line_of_cause(exc)}")


def _raise_block_error(index: BlockIndex, exc: RayTaskError) -> NoReturn:
    """The block's own code failed on the worker: an input error as itself, anything else named by block."""
    cause = exc.cause
    if isinstance(cause, InputError):
        raise type(cause)(str(cause)) from None
    raise BlockFailedError(f"block {list(index)} failed: {type(cause).__name__}: {cause}") from exc


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
        handles = self._start_actors(job)
        try:
            dispatch = _Dispatch(self, job, handles, pending, progress)
            dispatch.run()
        finally:
            for h in handles:
                ray.kill(h, no_restart=True)
        job.timings["infer"] = time.perf_counter() - dispatch.t0
        return len(pending), skipped

    def _start_actors(self, job: Any) -> list[Any]:
        """Size the pool for the Ray it runs on and start the actors (not yet answering)."""
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
        return [actor_class.remote(job.config, self.pool.threads) for _ in range(self.pool.actors)]


class _Dispatch:
    """One run's hand-out loop: blocks to actors that answer, reports back, lost blocks out again.

    Actors are numbered by their place in ``handles``. Blocks go only to actors that
    answered a ping (``describe``): a call queued on an actor that never came up (its
    node left before it started) would wait forever.
    """

    def __init__(
        self,
        runner: RayBlockRunner,
        job: Any,
        handles: list[Any],
        pending: list[Block],
        progress: Progress | None,
    ):
        self.t0 = time.perf_counter()
        self.runner = runner
        self.job = job
        self.handles = handles
        self.progress = progress
        self.queue = BlockQueue([b.index for b in pending], runner.max_attempts)
        self.pixels = {b.index: b.num_pixels for b in pending}
        self.load = dict.fromkeys(range(len(handles)), 0)
        self.ready: set[int] = set()
        self.dead: set[int] = set()
        self.in_flight: dict[ray.ObjectRef, tuple[int, BlockIndex]] = {}
        self.probes: dict[ray.ObjectRef, int] = {h.describe.remote(): a for a, h in enumerate(handles)}
        self.described: dict[int, dict[str, Any]] = {}
        self.tiles = 0
        self.idle_since: float | None = None

    def run(self) -> None:
        """Until every pending block is done: hand out, wait for one answer, handle it."""
        while not self.queue.complete:
            self._hand_out()
            waiting_on = list(self.in_flight) + list(self.probes)
            self._check_not_stalled()
            done_refs, _ = ray.wait(waiting_on, num_returns=1, timeout=1.0)
            for ref in done_refs:
                if ref in self.probes:
                    self._answered_probe(ref)
                else:
                    self._collect(ref)
        self.job.timings["tiles"] = self.tiles
        self.runner.actors = list(self.described.values())

    def _hand_out(self) -> None:
        """Fill each ready actor up to its in-flight bound, least loaded first."""
        for a in sorted(self.ready, key=lambda a: self.load[a]):
            while self.load[a] < self.runner.in_flight_per_actor and self.queue.has_waiting():
                index = self.queue.take()
                self.in_flight[self.handles[a].run.remote(index)] = (a, index)
                self.load[a] += 1

    def _check_not_stalled(self) -> None:
        """Fail when every actor is gone for good, or none has been usable for the stall timeout."""
        if len(self.dead) == len(self.handles):
            raise BlockFailedError("every Ray worker died; the done blocks are kept, run again to resume")
        if self.in_flight:
            self.idle_since = None
            return
        self.idle_since = self.idle_since or time.perf_counter()
        if time.perf_counter() - self.idle_since > self.runner.stall_timeout_s:
            raise BlockFailedError(
                f"no Ray worker has been available for {self.runner.stall_timeout_s:.0f} s; "
                "the done blocks are kept, run again to resume"
            )

    def _probe(self, a: int) -> None:
        self.probes[self.handles[a].describe.remote()] = a

    def _answered_probe(self, ref: ray.ObjectRef) -> None:
        """An actor answered its ping (ready), died for good (dead), or is restarting (ping again)."""
        a = self.probes.pop(ref)
        try:
            self.described[a] = ray.get(ref)
            self.ready.add(a)
        except ActorDiedError as exc:
            if exc.actor_init_failed:
                raise _cannot_start(exc) from None
            self.dead.add(a)  # restarts exhausted: never comes back
        except RayActorError:
            self._probe(a)

    def _collect(self, ref: ray.ObjectRef) -> None:
        """A block's call returned: record it done, fail the run, or hand the block out again."""
        a, index = self.in_flight.pop(ref)
        self.load[a] -= 1
        try:
            report: BlockReport = ray.get(ref)
        except RayTaskError as exc:
            _raise_block_error(index, exc)
        except RayActorError as exc:
            self._lost(a, index, exc)
            return
        self._finished(index, report)

    def _lost(self, a: int, index: BlockIndex, exc: RayActorError) -> None:
        """The block's actor went away: queue the block again and ping the actor until it is back."""
        if isinstance(exc, ActorDiedError) and exc.actor_init_failed:
            raise _cannot_start(exc) from None
        self.runner.retries += 1
        self.queue.lost(index, type(exc).__name__)
        if self.progress is not None:
            self.progress.retry(f"block {list(index)}: its worker was lost, handing it out again")
        if a in self.ready:
            self.ready.discard(a)
            self._probe(a)

    def _finished(self, index: BlockIndex, report: BlockReport) -> None:
        """A block was written: count it, time the first one, report progress."""
        self.queue.finished(index)
        self.runner.block_nodes[index] = report.node_id
        self.tiles += report.tiles
        if "first_block" not in self.job.timings:
            self.job.timings["first_block"] = time.perf_counter() - self.t0
        if self.progress is not None:
            self.progress.tiles_done(report.tiles)
            self.progress.block_done(self.pixels[index])
        if self.runner.on_block is not None:
            self.runner.on_block(report)


__all__ = ["RayBlockRunner", "connect"]
