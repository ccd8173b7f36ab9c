"""The pool's hand-out loop: blocks of every submitted scene to actors that answer, reports back.

One :class:`Dispatcher` thread per pool owns the actors' bookkeeping; callers submit
a scene (:class:`SceneRun`) and wait for it. Blocks go out first come, first served
by scene: the oldest scene's blocks first, the next scene's as soon as the oldest
has none waiting, so no actor idles while a scene is being ingested or exported.

A block's own failure (unreadable input, an exception in the block code, a block
that keeps killing workers) fails its scene only; the pool serves the others.
What leaves no usable worker (every actor dead, none able to start, none available
for the stall timeout) fails every scene in flight and every later one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from pipeline.errors import InputError
from pipeline.execution.block_queue import BlockFailedError, BlockIndex, BlockQueue
from pipeline.execution.block_worker import BlockReport
from pipeline.execution.progress import Progress
from pipeline.job.plan import Job
from pipeline.tiling.blocks import Block

WAIT_S = 0.2
"""How long the loop waits for an answer before looking for newly submitted scenes."""


class PoolFailedError(BlockFailedError):
    """The pool has no usable worker left: every scene in flight fails with this."""


def _first_line_of_cause(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _cannot_start(exc: ActorDiedError) -> PoolFailedError:
    return PoolFailedError(f"a Ray worker could not start: {_first_line_of_cause(exc)}")


def _raise_block_error(index: BlockIndex, exc: RayTaskError) -> NoReturn:
    """The block's own code failed on the worker: an input error as itself, anything else named by block."""
    cause = exc.cause
    if isinstance(cause, InputError):
        raise type(cause)(str(cause)) from None
    raise BlockFailedError(f"block {list(index)} failed: {type(cause).__name__}: {cause}") from exc


class SceneRun:
    """One scene's pending blocks in the pool: queue, counts, progress, and how it ended."""

    def __init__(self, job: Job, pending: list[Block], progress: Progress | None, max_attempts: int):
        self.job = job
        self.config_ref = ray.put(job.config)
        self.progress = progress
        self.queue = BlockQueue([b.index for b in pending], max_attempts)
        self.pixels = {b.index: b.num_pixels for b in pending}
        self.t0 = time.perf_counter()
        self.tiles = 0
        self.retries = 0
        self.error: BaseException | None = None
        self.ended = threading.Event()

    def end(self, error: BaseException | None = None) -> None:
        """Finished (``error`` None) or failed: the submitting thread wakes up."""
        self.error = error
        self.job.timings["tiles"] = self.tiles
        self.ended.set()

    def wait(self) -> None:
        """Until the scene's blocks are all written; raises what failed it."""
        self.ended.wait()
        if self.error is not None:
            raise self.error


class Dispatcher:
    """The hand-out loop over a pool's actors (numbered by their place in ``handles``).

    Blocks go only to actors that answered a ping (``describe``): a call queued on an
    actor that never came up (its node left before it started) would wait forever.
    """

    def __init__(
        self,
        handles: list[Any],
        in_flight_per_actor: int,
        stall_timeout_s: float,
        on_block: Callable[[BlockReport], None] | None = None,
    ):
        self.handles = handles
        self.in_flight_per_actor = in_flight_per_actor
        self.stall_timeout_s = stall_timeout_s
        self.on_block = on_block
        self.inbox: queue.Queue[SceneRun | None] = queue.Queue()
        self.runs: list[SceneRun] = []
        self.load = dict.fromkeys(range(len(handles)), 0)
        self.ready: set[int] = set()
        self.dead: set[int] = set()
        self.in_flight: dict[ray.ObjectRef, tuple[int, SceneRun, BlockIndex]] = {}
        self.probes: dict[ray.ObjectRef, int] = {h.describe.remote(): a for a, h in enumerate(handles)}
        self.described: dict[int, dict[str, Any]] = {}
        self.idle_since: float | None = None
        self.failure: PoolFailedError | None = None
        self.stopping = False

    def submit(self, run: SceneRun) -> None:
        """Queue a scene's blocks; a broken pool fails it at once."""
        if self.failure is not None:
            run.end(self.failure)
        else:
            self.inbox.put(run)

    def stop(self) -> None:
        """End the loop (scenes still in flight fail)."""
        self.inbox.put(None)

    def serve(self) -> None:
        """The loop: take new scenes, hand out, wait for one answer, handle it; until stopped."""
        while not self.stopping:
            self._take_new(block=not (self.runs or self.in_flight))
            try:
                self._step()
            except PoolFailedError as exc:
                self._fail_pool(exc)
        for run in self.runs:
            run.end(PoolFailedError("the Ray pool was shut down before the scene's blocks were done"))

    def _take_new(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=WAIT_S) if block else self.inbox.get_nowait()
            while True:
                if item is None:
                    self.stopping = True
                elif self.failure is not None:
                    item.end(self.failure)
                else:
                    self.runs.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return

    def _step(self) -> None:
        self._hand_out()
        waiting_on = list(self.in_flight) + list(self.probes)
        self._check_not_stalled()
        if not waiting_on:
            return
        done_refs, _ = ray.wait(waiting_on, num_returns=1, timeout=WAIT_S)
        for ref in done_refs:
            if ref in self.probes:
                self._answered_probe(ref)
            else:
                self._collect(ref)

    def _fail_pool(self, exc: PoolFailedError) -> None:
        self.failure = exc
        for run in self.runs:
            run.end(exc)
        self.runs.clear()

    def _next_block(self) -> tuple[SceneRun, BlockIndex] | None:
        """The oldest scene's next waiting block."""
        for run in self.runs:
            if run.queue.has_waiting():
                return run, run.queue.take()
        return None

    def _hand_out(self) -> None:
        """Fill each ready actor up to its in-flight bound, least loaded first."""
        for a in sorted(self.ready, key=lambda a: self.load[a]):
            while self.load[a] < self.in_flight_per_actor and (picked := self._next_block()) is not None:
                run, index = picked
                self.in_flight[self.handles[a].run.remote(run.config_ref, index)] = (a, run, index)
                self.load[a] += 1

    def _check_not_stalled(self) -> None:
        """Fail when every actor is gone for good, or none has been usable for the stall timeout."""
        if len(self.dead) == len(self.handles):
            raise PoolFailedError("every Ray worker died; the done blocks are kept, run again to resume")
        if self.in_flight or not self.runs:
            self.idle_since = None
            return
        self.idle_since = self.idle_since or time.perf_counter()
        if time.perf_counter() - self.idle_since > self.stall_timeout_s:
            raise PoolFailedError(
                f"no Ray worker has been available for {self.stall_timeout_s:.0f} s; "
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
        """A block's call returned: record it done, fail its scene, or hand the block out again."""
        a, run, index = self.in_flight.pop(ref)
        self.load[a] -= 1
        try:
            report: BlockReport = ray.get(ref)
        except RayTaskError as exc:
            self._failed(run, index, exc)
            return
        except RayActorError as exc:
            self._lost(a, run, index, exc)
            return
        if run in self.runs:
            self._finished(run, index, report)

    def _failed(self, run: SceneRun, index: BlockIndex, exc: RayTaskError) -> None:
        """A block's own code failed: its scene ends with that error (once), the others go on."""
        if run not in self.runs:
            return  # the scene has already failed
        try:
            _raise_block_error(index, exc)
        except Exception as error:
            self.runs.remove(run)
            run.end(error)

    def _lost(self, a: int, run: SceneRun, index: BlockIndex, exc: RayActorError) -> None:
        """The block's actor went away: queue the block again and ping the actor until it is back."""
        if isinstance(exc, ActorDiedError) and exc.actor_init_failed:
            raise _cannot_start(exc) from None
        if a in self.ready:
            self.ready.discard(a)
            self._probe(a)
        if run not in self.runs:
            return
        run.retries += 1
        try:
            run.queue.lost(index, type(exc).__name__)
        except BlockFailedError as error:
            self.runs.remove(run)
            run.end(error)
            return
        if run.progress is not None:
            run.progress.retry(f"block {list(index)}: its worker was lost, handing it out again")

    def _finished(self, run: SceneRun, index: BlockIndex, report: BlockReport) -> None:
        """A block was written: count it, time the first one, report progress; end a complete scene."""
        run.queue.finished(index)
        run.tiles += report.tiles
        run.job.timings.setdefault("first_block", time.perf_counter() - run.t0)
        if run.progress is not None:
            run.progress.tiles_done(report.tiles)
            run.progress.block_done(run.pixels[index])
        if self.on_block is not None:
            self.on_block(report)
        if run.queue.complete:
            self.runs.remove(run)
            run.end()
