"""The Ray pool's member: the model loaded once, many scenes' jobs reopened, blocks computed and written.

Plain class, wrapped by ``ray.remote`` in :class:`pipeline.execution.ray_pool.ActorPool`,
so its logic can be read and called without Ray. An actor serves the blocks of every
scene of a batch: each call names its scene by the job's configuration, the actor
reopens that job once (:func:`pipeline.job.plan.attach`, no re-ingest) and keeps the
last few; the model is loaded once per source (:class:`~pipeline.job.model_source.ModelCache`).
Only a :class:`BlockReport` goes back to the driver; the block's pixels go straight to
the output store.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray
import torch

from pipeline.engine.device import select_device
from pipeline.engine.predictor import TilePredictor
from pipeline.execution.block_queue import BlockFailedError, BlockIndex
from pipeline.execution.heap_allocator import allocator_in_use
from pipeline.execution.openmp_spinning import USER_SETTINGS
from pipeline.job.config import SegmentConfig
from pipeline.job.model_source import ModelCache
from pipeline.job.plan import Job
from pipeline.tiling.blocks import Block

ATTACHED_SCENES = 8
"""Scenes an actor keeps reopened; the least recently used one is dropped (reopened if asked again)."""


@dataclass(frozen=True)
class BlockReport:
    """What an actor returns for a block it wrote: small, never the data."""

    index: BlockIndex
    tiles: int
    seconds: float
    pid: int
    node_id: str


@dataclass
class AttachedScene:
    """One scene's job as a worker reopened it, with its predictor (over the shared model) and blocks."""

    job: Job
    predictor: TilePredictor
    blocks: dict[BlockIndex, Block]


def scene_key(config: SegmentConfig) -> str:
    """What tells the scenes of a pool apart: the whole configuration (its work folder among it)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


class BlockWorker:
    """A pool member: the model on its device, scenes reopened on demand, one block at a time computing.

    Runs two calls at once (a threaded actor): while one computes under the
    compute lock, the next one reads its footprint — that is the prefetch.
    """

    def __init__(self, device: str, threads: int, gpu_share: float = 1.0):
        from pipeline.execution.process_memory import bound_process_memory

        bound_process_memory()
        torch.set_num_threads(max(1, threads))
        # On a GPU actor Ray exposes exactly its GPU (CUDA_VISIBLE_DEVICES): any cuda
        # name means that one. "auto" checks torch.cuda.is_available(), so a GPU that
        # Ray only *advertises* (no CUDA on the machine) leaves the actor on CPU.
        self.device = select_device("cuda" if device.startswith("cuda") else device)
        self.gpu_share = gpu_share
        """The part of its GPU this actor holds (``1/--workers-per-gpu``): its batches fit that part."""
        self.models = ModelCache()
        self.scenes: OrderedDict[str, AttachedScene] = OrderedDict()
        self.scenes_attached = 0
        self._attach = threading.Lock()
        self._compute = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Where this actor runs (node, pid, GPUs and its share of them, device, threads, OpenMP waiting,
        heap allocator) and what it has loaded."""
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "gpu_share": self.gpu_share,
            "threads": torch.get_num_threads(),
            "openmp_waiting": {k: os.environ[k] for k in USER_SETTINGS if k in os.environ},
            "allocator": allocator_in_use(),
            "models_loaded": self.models.loads,
            "scenes_attached": self.scenes_attached,
        }

    def scene(self, config: SegmentConfig) -> AttachedScene:
        """The scene's job, reopened at its first block here (the model from the cache)."""
        from pipeline.execution.in_process import predictor_for
        from pipeline.job.plan import attach

        key = scene_key(config)
        with self._attach:
            if key in self.scenes:
                self.scenes.move_to_end(key)
                return self.scenes[key]
            job = attach(config, load=self.models.load)
            with self._compute:  # the shared model is moved / converted in place: not while it runs
                predictor = predictor_for(job, self.device, self.gpu_share)
            attached = AttachedScene(job, predictor, {b.index: b for b in job.plan})
            self.scenes[key] = attached
            self.scenes_attached += 1
            while len(self.scenes) > ATTACHED_SCENES:
                self.scenes.popitem(last=False)
            return attached

    def run(self, config: SegmentConfig, index: BlockIndex) -> BlockReport:
        """Read, compute and write one block of the scene ``config`` names; report how it went."""
        from pipeline.execution.in_process import compute_block

        t0 = time.perf_counter()
        scene = self.scene(config)
        job, block = scene.job, scene.blocks[tuple(index)]
        try:
            raw, valid = job.read(block.footprint)
        except Exception as exc:
            raise BlockFailedError(
                f"{job.scene.where}: block {list(block.index)} (pixels {block.footprint}) "
                f"cannot be read: {type(exc).__name__}: {exc}"
            ) from None
        with self._compute:
            before = scene.predictor.tiles_run
            output = compute_block(job, block, scene.predictor, read=lambda _region: (raw, valid))
            tiles = scene.predictor.tiles_run - before
        job.store.write_block(block, output)
        return BlockReport(
            block.index, tiles, time.perf_counter() - t0, os.getpid(), ray.get_runtime_context().get_node_id()
        )
