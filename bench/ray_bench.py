"""Ray execution benchmark, side by side in one run on one local Ray.

1. Scaling: block-phase throughput with 1 and with 2 CPU actors (1 torch thread each).
2. Overhead: the Ray path (1 actor, all cores) against the in-process engine (all
   cores) on the same scene and blocks — block phase only, Ray already started.
3. Time from the start of the block phase to the first block done (Ray, 1 actor),
   and the one-off cost of starting a local Ray.

The model is a seeded untrained U-Net (width 16, depth 3): compute-bound, as real
models are. Run: ``python -m bench.ray_bench [--side N]``; results are printed and
written to the "Ray execution" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from bench.results import table_head, write_section
from models import build
from models.checkpoint import card_for, save_checkpoint
from pipeline.demos.sample_scene import write_sample_scene
from pipeline.execution.in_process import run_blocks_in_process
from pipeline.execution.ray_pool import RayBlockRunner, connect
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import prepare


def _job(scene: Path, model: Path, work: Path, threads: int):
    work.mkdir(parents=True, exist_ok=True)
    config = SegmentConfig(
        input=scene, model=str(model), output=work / "out.tif", tile=128, block=256, chunk=256,
        batch_size=4, quiet=True, threads=threads, work_dir=work / "w",
    )  # fmt: skip
    return prepare(config)


def _in_process(scene: Path, model: Path, work: Path, threads: int) -> float:
    job = _job(scene, model, work, threads)
    t0 = time.perf_counter()
    run_blocks_in_process(job)
    return time.perf_counter() - t0


def _on_ray(scene: Path, model: Path, work: Path, workers: int, threads: int) -> tuple[float, float]:
    job = _job(scene, model, work, threads)
    t0 = time.perf_counter()
    RayBlockRunner(workers=workers)(job)
    return time.perf_counter() - t0, job.timings["first_block"]


@dataclass
class Timings:
    """Best block-phase seconds of each variant, and Ray's one-off costs."""

    ray_1x1: float
    ray_2x1: float
    ray_1xn: float
    local_n: float
    first_block: float
    """Seconds from the start of the block phase to the first block done (Ray, 1 actor, all cores)."""
    startup: float
    """Seconds to start a local Ray."""


def measure(side: int, repeats: int, tmp: Path, cores: int) -> Timings:
    """Every variant ``repeats`` times, interleaved, so a noisy minute hits every variant alike."""
    scene = write_sample_scene(tmp, side, seed=0).image
    torch.manual_seed(0)
    net = build("unet", in_channels=4, num_classes=5, width=16, depth=3)
    model = save_checkpoint(tmp / "unet.safetensors", net, card_for(net, tile_size=128))
    t0 = time.perf_counter()
    connect()
    startup = time.perf_counter() - t0
    best: dict[str, float] = {}
    firsts: list[float] = []
    for r in range(repeats):
        runs = {
            "r11": lambda w: _on_ray(scene, model, w, workers=1, threads=1),
            "r21": lambda w: _on_ray(scene, model, w, workers=2, threads=1),
            "r1n": lambda w: _on_ray(scene, model, w, workers=1, threads=cores),
            "ipn": lambda w: (_in_process(scene, model, w, threads=cores), None),
        }
        for name, fn in runs.items():
            seconds, first_block = fn(tmp / f"{name}{r}")
            best[name] = min(best.get(name, float("inf")), seconds)
            if first_block is not None and name == "r1n":
                firsts.append(first_block)
    ray.shutdown()
    return Timings(best["r11"], best["r21"], best["r1n"], best["ipn"], min(firsts), startup)


def report(args: argparse.Namespace, t: Timings, cores: int) -> str:
    """The "Ray execution" section: the runs' table and the three ratios against their targets."""
    mpx = args.side**2 / 1e6
    rows = [
        ("Ray, 1 CPU actor × 1 thread", t.ray_1x1),
        ("Ray, 2 CPU actors × 1 thread", t.ray_2x1),
        (f"Ray, 1 CPU actor × {cores} threads", t.ray_1xn),
        (f"in process, {cores} threads", t.local_n),
    ]
    table = "\n".join(
        table_head("run", "seconds", "Mpx/s") + [f"| {name} | {s:.2f} | {mpx / s:.3f} |" for name, s in rows]
    )
    scaling, overhead = t.ray_1x1 / t.ray_2x1, t.ray_1xn / t.local_n
    return (
        f"`python -m bench.ray_bench --side {args.side} --repeats {args.repeats}` (best of "
        f"{args.repeats} interleaved rounds) — {dt.date.today()}, {platform.machine()}, "
        f"{cores} cores shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end: noisy), "
        f"torch {torch.__version__}, ray {ray.__version__}; "
        f"{args.side}² 4-band scene, untrained U-Net w16 d3, tile 128, 256² blocks "
        f"({(args.side // 256) ** 2} blocks). Block phase only (Ray already up).\n\n"
        f"{table}\n\n"
        f"- 2 actors vs 1 actor (1 thread each): **{scaling:.2f}×** throughput (target ≥ 1.7×)\n"
        f"- Ray path vs in-process, all cores each: **{overhead:.3f}×** time (target ≤ 1.05×)\n"
        f"- first block done {t.first_block:.2f} s after the block phase started (actor start + model load "
        f"+ one block); starting a local Ray: {t.startup:.1f} s once per process\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="scene side in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_name:
        timings = measure(args.side, args.repeats, Path(tmp_name), cores)
    body = report(args, timings, cores)
    print(body)
    write_section("Ray execution", body)


if __name__ == "__main__":
    main()
