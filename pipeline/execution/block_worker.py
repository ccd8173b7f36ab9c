"""The Ray pool's member: the job reopened on a worker, the model loaded once, blocks computed and written.

Plain class, wrapped by ``ray.remote`` in :class:`pipeline.execution.ray_pool.RayBlockRunner`,
so its logic can be read and called without Ray. Only a :class:`BlockReport` goes back to the
driver; the block's pixels go straight to the output store.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from pipeline.engine.device import select_device
from pipeline.execution.block_queue import BlockFailedError, BlockIndex
from pipeline.job.config import SegmentConfig
from pipeline.tiling.blocks import Block


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

    Runs two calls at once (a threaded actor): while one computes under the
    compute lock, the next one reads its footprint — that is the prefetch.
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
