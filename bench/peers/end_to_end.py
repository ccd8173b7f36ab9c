"""The rows that run from the GeoTIFF to the COG: gigaseg in process, through the command and on
Ray, and what a MONAI user would write instead (``monai-user``).

Their seconds include reading the scene and writing the COG (the in-memory peers' do not).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.peers.probes import GpuSampler, TreeRss, peak_rss
from bench.peers.rows import RowSpec

if TYPE_CHECKING:
    from pipeline.execution.ray_pool import RayBlockRunner


def start_ray(workers: int | None) -> tuple[RayBlockRunner, float]:
    """A fresh local Ray cluster (what ``segment`` starts when none runs) and a block runner on it.

    ``address="local"`` always starts a new cluster, with ``connect``'s options: it
    never joins one another user left running on this machine, so the cluster's
    processes are this row's descendants and its summed RSS is the row's alone.
    Returns the runner and the start-up seconds.
    """
    import logging

    import ray

    from pipeline.execution.ray_pool import RayBlockRunner

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return RayBlockRunner(workers=workers), time.perf_counter() - t0


def _segment_in_process(spec: RowSpec, cog: Path) -> dict[str, float]:
    """``pipeline.job.steps.segment`` (on Ray for ``gigaseg-ray``); returns the stages' seconds."""
    from pipeline.job.config import SegmentConfig
    from pipeline.job.steps import segment

    on_ray = spec.row == "gigaseg-ray"
    stages: dict[str, float] = {}
    runner = None
    if on_ray:
        runner, stages["ray_start"] = start_ray(spec.ray_workers)
    config = SegmentConfig(
        input=Path(spec.scene), model=spec.ckpt, output=cog, workers=spec.ray_workers if on_ray else 0,
        workers_per_gpu=spec.workers_per_gpu,
        device=spec.device, work_dir=Path(spec.out) / "work", channels_last=True, tile=spec.tile,
        overlap=spec.overlap, blend="gaussian", batch_size=spec.batch, quiet=True, amp=spec.amp,
    )  # fmt: skip
    summary = segment(config, run_blocks=runner)
    stages.update(summary.timings)
    return {k: round(v, 2) for k, v in stages.items() if k != "tiles"}


def _segment_command(spec: RowSpec, cog: Path) -> None:
    """The whole ``gigaseg segment --workers 0 --no-track`` command, Prefect flow included."""
    from flows.cli import main as cli

    argv = ["segment", spec.scene, "-m", spec.ckpt, "-o", str(cog), "--workers", "0"]
    argv += ["--no-track", "--quiet", "--tile", str(spec.tile), "--overlap", str(spec.overlap)]
    argv += ["--batch-size", str(spec.batch), "--device", spec.device] + (["--amp"] if spec.amp else [])
    if cli(argv) != 0:
        raise RuntimeError("gigaseg segment failed")


def _monai_user(spec: RowSpec, cog: Path) -> dict[str, float]:
    """What a MONAI user writes instead of gigaseg, file to file: read the GeoTIFF with rasterio,
    normalise as the card says, MONAI's ``sliding_window_inference`` (gaussian, the same tile /
    overlap / batch), labels, then a COG with MODE overviews through GDAL. Returns its stages' seconds.

    The labels are taken with ``torch.max`` over the classes, as the in-memory rows do: the
    plainer ``probs.argmax(0)`` is much slower on a CPU (bench/RESULTS.md, "A MONAI user's end
    to end"), which would make this row slower than what a careful user writes."""
    import rasterio
    import torch
    from rasterio.shutil import copy as copy_dataset

    from bench.peers.chips import labels_of
    from bench.peers.in_memory import predictor
    from bench.peers.monai_window import monai_probabilities
    from models.checkpoint import load_checkpoint
    from pipeline.inputs.normalization import normalize

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    device = torch.device(spec.device)
    model, card = load_checkpoint(spec.ckpt, device)
    with rasterio.open(spec.scene) as src:
        raw, profile = src.read(), src.profile
    stages["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = torch.from_numpy(normalize(raw, card.normalization))
    probs = monai_probabilities(x, predictor(model, device, spec.amp), spec.tiling, "gaussian", device)
    labels = labels_of(probs).numpy()
    stages["inference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = cog.with_name("labels.plain.tif")
    profile.update(count=1, dtype="uint8", nodata=None, compress="deflate", tiled=True, blockxsize=512,
                   blockysize=512, bigtiff="IF_SAFER")  # fmt: skip
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(labels, 1)
    copy_dataset(plain, cog, driver="COG", compress="DEFLATE", overview_resampling="MODE", bigtiff="IF_SAFER")
    plain.unlink()
    stages["write"] = time.perf_counter() - t0
    return {k: round(v, 2) for k, v in stages.items()}


def run_end_to_end(spec: RowSpec) -> dict[str, Any]:
    """Run one end-to-end row; returns its seconds, stages, peak RSS and GPU share."""
    from pipeline.execution.process_memory import bound_process_memory

    bound_process_memory()  # as the gigaseg command does at start
    cog = Path(spec.out) / "labels.tif"
    on_ray = spec.row == "gigaseg-ray"
    result: dict[str, Any] = {"row": spec.row}
    with GpuSampler(spec.device) as gpu, TreeRss(on=on_ray) as tree:
        t0 = time.perf_counter()
        if spec.row == "gigaseg-cli":
            _segment_command(spec, cog)
        elif spec.row == "monai-user":
            result["stages"] = _monai_user(spec, cog)
        else:
            result["stages"] = _segment_in_process(spec, cog)
        result["seconds"] = time.perf_counter() - t0
    # The Ray row's work runs in the cluster's processes: the summed tree's peak.
    result["rss"] = max(tree.peak, peak_rss()) if on_ray else peak_rss()
    result["gpu_busy"] = gpu.busy
    if on_ray:  # after the clock: the cluster's processes go with it
        import ray

        ray.shutdown()
    if spec.seam:
        import rasterio

        with rasterio.open(cog) as src:
            np.save(Path(spec.out) / "labels.npy", src.read(1))
    return result
