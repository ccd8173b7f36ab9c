"""Many scenes through one command: each model loaded once, one actor pool for all of them.

A :class:`SceneBatch` is entered around the scenes of a batch (``gigaseg segment`` with
several inputs, one scan of ``gigaseg watch``). While it is active (:func:`active_batch`)
each scene's steps find in it the model cache, so the driver loads each model once, and,
when blocks run on Ray, the batch's :class:`~pipeline.execution.ray_pool.ActorPool`:
started at the first scene that needs it, with that scene's settings, and stopped when
the batch ends. The actors load the model once and serve the blocks of every scene.

Scenes run a few at a time (:attr:`SceneBatch.scenes_in_flight`): one scene's blocks run
on the pool while the next is being ingested and the previous exported, and the pool
hands out the oldest scene's blocks first, so no actor waits for a scene's ingest or
export. Each scene keeps its own outputs, work folder, run record and failure: a scene
that fails is reported and the others go on. In this process (0 workers) the scenes run
one after another over the one loaded model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.execution.progress import Progress
from pipeline.job.config import SegmentConfig
from pipeline.job.model_source import ModelCache
from pipeline.job.plan import Job
from pipeline.job.summary import SegmentSummary

if TYPE_CHECKING:
    from pipeline.execution.ray_pool import ActorPool

SCENES_IN_FLIGHT = 3
"""Scenes of a Ray batch between check and export at once: one exporting, one on the pool, one ingesting."""

_active: SceneBatch | None = None


def active_batch() -> SceneBatch | None:
    """The batch this process is running now, if any."""
    return _active


class SceneBatch:
    """The shared parts of a batch's scenes: the model cache and (on Ray) the actor pool.

    ``workers``: Ray actors as ``--workers`` says (None: sized by Ray), 0 for this process;
    ``address``: the Ray cluster to join (None: ``$RAY_ADDRESS``, else a private Ray).

    >>> with SceneBatch(workers=0) as batch:
    ...     active_batch() is batch, batch.uses_ray, batch.scenes_in_flight
    (True, False, 1)
    >>> active_batch() is None
    True
    """

    def __init__(
        self, workers: int | None = None, address: str | None = None, scenes_in_flight: int | None = None
    ):
        self.workers = workers
        self.address = address
        self.models = ModelCache()
        self.scenes_in_flight = scenes_in_flight or (SCENES_IN_FLIGHT if self.uses_ray else 1)
        self.actors: list[dict[str, Any]] = []
        """Each actor's description when the batch ended (models loaded, scenes served)."""
        self._pool: ActorPool | None = None
        self._lock = threading.Lock()

    @property
    def uses_ray(self) -> bool:
        """Whether the batch's blocks run on a Ray pool (else in this process)."""
        return self.workers != 0

    def __enter__(self) -> SceneBatch:
        global _active
        if _active is not None:
            raise RuntimeError("a scene batch is already running in this process")
        if self.uses_ray:
            # Ray here, not in a scene's thread: a private Ray's processes die with the *thread*
            # that started them (Linux parent-death signal), and scene threads end before the batch.
            from pipeline.execution.ray_pool import connect

            connect(self.address)
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None
        self.close()

    def pool(self, config: SegmentConfig) -> ActorPool:
        """The batch's actor pool, started for ``config``'s settings at the first call."""
        from pipeline.execution.ray_pool import ActorPool

        with self._lock:
            if self._pool is None:
                self._pool = ActorPool.start(config, self.workers)
            return self._pool

    def run_blocks(self, job: Job, progress: Progress | None = None) -> tuple[int, int]:
        """A ``BlockRunner`` on the batch's pool: this job's pending blocks, among the other scenes'."""
        return self.pool(job.config).run(job, progress)

    def close(self) -> None:
        """Stop the pool (after noting what each actor did)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            self.actors = pool.describe()
        except Exception:  # an actor already gone: describe what answered at the start
            self.actors = pool.actors
        pool.close()


@dataclass
class BatchReport:
    """What a batch did: each finished scene's summary, each failed scene's one-line reason."""

    done: list[SegmentSummary] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(input, one-line reason) pairs."""
    seconds: float = 0.0
    actors: list[dict[str, Any]] = field(default_factory=list)
    """The pool's actors as they described themselves at the end (empty in process)."""
    models_loaded: int = 0
    """Models the driver loaded for the batch's checks (and its blocks, in process)."""

    def line(self) -> str:
        """One-line summary.

        >>> BatchReport(seconds=2.0, failed=[("b.tif", "corrupt")]).line()
        '0 scene(s) segmented, 1 failed, 2.0 s'
        """
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{len(self.done)} scene(s) segmented{failed}, {self.seconds:.1f} s"
