"""Running a job's blocks in this process: one block computes while an I/O thread reads and writes.

The default block runner of :func:`pipeline.job.steps.infer`; the Ray pool
(:mod:`pipeline.execution.ray_pool`) runs the same :func:`compute_block` on its actors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from pipeline.engine.block import infer_block
from pipeline.engine.device import select_device
from pipeline.engine.predictor import TilePredictor
from pipeline.engine.slicewise import SliceWiseModel
from pipeline.execution.process_memory import release_freed_memory
from pipeline.execution.progress import Progress
from pipeline.job.plan import Job
from pipeline.stores.block_output import BlockOutput
from pipeline.tiling.blocks import Block
from pipeline.tiling.grid import Region


def predictor_for(job: Job, device: torch.device | None = None, gpu_share: float = 1.0) -> TilePredictor:
    """A tile predictor for this job's model on the configured device (``gpu_share``: of a shared GPU)."""
    device = device or select_device(job.config.device)
    model = job.model if job.slice_axis is None else SliceWiseModel(job.model, job.slice_axis)
    predictor = TilePredictor(
        model,
        device,
        job.config.batch_size,
        job.config.amp,
        tta=job.config.tta,
        channels_last=job.config.channels_last,
    )
    predictor.fit_to_memory((len(job.bands), *job.grid.tile), gpu_share)
    return predictor


def compute_block(
    job: Job,
    block: Block,
    predictor: TilePredictor,
    on_tiles: Callable[[int], None] | None = None,
    read: Callable[[Region], tuple[np.ndarray, np.ndarray]] | None = None,
) -> BlockOutput:
    """One block's labels (probabilities, and polygon piece when polygons are wanted), not yet written.

    ``read`` replaces the scene read (a worker passes the footprint it prefetched).
    The block's freed temporaries go back to the system before it returns (see
    :func:`~pipeline.execution.process_memory.release_freed_memory`).
    """
    output = infer_block(
        read or job.read,
        block,
        job.grid,
        job.window,
        predictor,
        job.normalizer(),
        job.num_classes,
        with_probabilities=job.store.probabilities is not None,
        refiner=job.refiner(),
        on_tiles=on_tiles,
        with_uncertainty=job.store.confidence is not None or job.config.vector is not None,
    )
    if job.config.vector is not None:
        origin = [start for start, _ in block.region]
        from pipeline.exporters.polygon_pieces import BlockPolygons  # scikit-image: only for polygons

        piece = BlockPolygons.from_labels(output.labels, output.confidence, origin, job.store.nodata)
        output.polygons = piece.to_bytes()
    release_freed_memory()
    return output


def run_blocks_in_process(job: Job, progress: Progress | None = None) -> tuple[int, int]:
    """Compute and write every pending block here; returns (run, skipped).

    One I/O thread reads the next block's footprint and writes the previous block's
    outputs while this block computes (zarr's codecs release the GIL), so reading
    and writing hide behind the model instead of adding to it. A block counts as
    done once its write has finished.
    """
    if job.config.threads:
        torch.set_num_threads(job.config.threads)
    pending = job.store.pending(job.plan)
    skipped = job.plan.num_blocks - len(pending)
    predictor = predictor_for(job)
    on_tiles = progress.tiles_done if progress else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gigaseg-io") as io:
        next_read = io.submit(job.read, pending[0].footprint) if pending else None
        writing: tuple[Block, Future[None]] | None = None
        for i, block in enumerate(pending):
            assert next_read is not None
            footprint = next_read.result()
            if i + 1 < len(pending):
                next_read = io.submit(job.read, pending[i + 1].footprint)
            output = compute_block(job, block, predictor, on_tiles, read=lambda _region, f=footprint: f)
            if writing is not None:
                _finish_write(*writing, progress)
            writing = (block, io.submit(job.store.write_block, block, output))
            del output  # the queued write holds it until written; not through the next block's compute
        if writing is not None:
            _finish_write(*writing, progress)
    job.timings["infer"] = time.perf_counter() - t0
    job.timings["tiles"] = predictor.tiles_run
    return len(pending), skipped


def _finish_write(block: Block, write: Future[None], progress: Progress | None) -> None:
    """Wait for a block's write, then count the block done."""
    write.result()
    if progress:
        progress.block_done(block.num_pixels)
