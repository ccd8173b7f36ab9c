"""Core engine benchmarks, measured side by side in one run.

1. Overhead: end-to-end seconds of ``gigaseg segment`` ÷ seconds of the bare
   model forward over the same tiles (same count, same batch size), for a
   compute-heavy model (U-Net, width 32).
2. I/O-bound throughput with a 1×1 convolution, against a plain chunk-for-chunk
   copy of the same data (GeoTIFF → Zarr → GeoTIFF) as the limit.
3. Peak memory (RSS of a child process) for a 16-Mpx and a large single-band
   scene with the 1×1 model: the large one should stay within 1.25× of the small.

Run: ``python -m bench.engine_bench [--quick] [--large-side N]``. Results are
printed and written to the "Core engine" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from bench.baseline import python_path
from bench.results import table_head, write_section
from models import build
from pipeline.job.config import SegmentConfig
from pipeline.tiling.grid import TileGrid

ROOT = Path(__file__).resolve().parents[1]


def write_scene(path: Path, bands: int, side: int, dtype: str = "uint8") -> Path:
    """A textured scene written window by window (never whole in memory)."""
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": bands,
        "dtype": dtype,
        "crs": CRS.from_epsg(32633),
        "transform": Affine(1, 0, 0, 0, -1, 0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "bigtiff": "IF_SAFER",
    }
    rng = np.random.default_rng(0)
    step = 4096
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, step):
            h = min(step, side - r)
            base = rng.integers(0, 255, (bands, h, 1), dtype=np.uint8)
            block = (base + np.arange(side, dtype=np.uint16)[None, None] // 7).astype(np.uint8)
            dst.write(block, window=rasterio.windows.Window(0, r, side, h))
    return path


ENGINE_ONLY = ["--workers", "0", "--no-track"]
"""The engine in process, untracked: Ray and MLflow overheads are measured by bench/ray_bench.py."""


def job_seconds(stderr: str) -> float:
    """The job's own seconds from the summary line (ingest → export, without Prefect's start-up)."""
    found = re.findall(r", ([0-9.]+) s, [0-9.]+ Mpx/s", stderr)
    return float(found[-1]) if found else float("nan")


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Seconds, peak RSS (bytes) and stderr of a ``gigaseg`` child process (engine only, see ENGINE_ONLY)."""
    args = [a for a in args if a != "--quiet"] + ENGINE_ONLY
    code = (
        "import resource, sys, time; from flows.cli import main; t=time.perf_counter(); "
        f"rc=main({args!r}); "
        "print('BENCH', time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "file=sys.stderr); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    line = [x for x in proc.stderr.splitlines() if x.startswith("BENCH")][-1].split()
    return float(line[1]), int(line[2]) * 1024, proc.stderr


def bare_forward_seconds(
    side: int,
    tile: int,
    overlap: float,
    batch: int,
    model_cfg: dict,
    in_channels: int,
    tiles: int | None = None,
) -> tuple[float, int]:
    """Seconds for the model alone over as many tiles as the grid has, in batches."""
    torch.manual_seed(0)
    model = build("unet", in_channels=in_channels, num_classes=5, **model_cfg).eval()
    grid = TileGrid.create((side, side), tile, overlap, model.downsampling)
    n = tiles or grid.num_tiles
    x = torch.randn(batch, in_channels, tile, tile)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            b = min(batch, n - done)
            torch.softmax(model(x[:b]), 1)
            done += b
    return time.perf_counter() - t0, n


def copy_seconds(src: Path, work: Path) -> float:
    """Plain chunk-for-chunk GeoTIFF → Zarr → GeoTIFF copy (the I/O floor)."""
    import zarr

    t0 = time.perf_counter()
    with rasterio.open(src) as s:
        z = zarr.open_array(
            str(work / "copy.zarr"),
            mode="w",
            shape=(s.count, s.height, s.width),
            chunks=(s.count, 512, 512),
            dtype=s.dtypes[0],
        )
        for _, w in s.block_windows(1):
            z[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = s.read(window=w)
        prof = {**s.profile, "count": 1, "compress": "deflate"}
    with rasterio.open(work / "copy.tif", "w", **prof) as d:
        for _, w in d.block_windows(1):
            d.write(z[0, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width], 1, window=w)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller scenes (smoke test of the bench)")
    p.add_argument("--large-side", type=int, default=32768, help="side of the large memory scene")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory comparison")
    p.add_argument("--io-only", action="store_true", help="only the I/O-bound throughput row")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gigaseg-bench-"))
    rows: list[str] = []

    if args.io_only:
        io_row(args, tmp, rows)
    elif not args.memory_only:
        overhead_and_io_rows(args, tmp, rows)
    if not args.io_only:
        memory_rows(args, tmp, rows)
    table = "\n".join(table_head("measurement", "numbers", "ratio") + rows)
    print(table)
    if not args.no_record:
        cmd = (
            "python -m bench.engine_bench"
            + (" --quick" if args.quick else "")
            + (" --memory-only" if args.memory_only else "")
            + (" --io-only" if args.io_only else "")
            + (f" --large-side {args.large_side}" if args.large_side != 32768 else "")
        )
        name = "Core engine: memory" if args.memory_only else "Core engine"
        write_section(
            "Core engine: I/O-bound" if args.io_only else name,
            f"Command: `{cmd}`  \nDate: {dt.date.today()}  \nMachine: {platform.machine()}, "
            f"{os.cpu_count()} CPU cores, no GPU, torch {torch.__version__}; load average "
            f"{os.getloadavg()[0]:.1f} at the end (shared machine)\n\n{table}\n",
        )
    return 0


def overhead_and_io_rows(args: argparse.Namespace, tmp: Path, rows: list[str]) -> None:
    """1. overhead with a compute-heavy model; 2. I/O-bound throughput against a plain copy."""
    side = 1024 if args.quick else 2048
    cfg = {"width": 32, "depth": 4}
    scene = write_scene(tmp / "rgb.tif", 3, side)
    from models.checkpoint import card_for, save_checkpoint

    torch.manual_seed(0)
    model = build("unet", in_channels=3, num_classes=5, **cfg)
    ckpt = save_checkpoint(tmp / "unet.safetensors", model, card_for(model, tile_size=256))
    e2e, _, err = run_cli(
        [
            "segment",
            str(scene),
            "-m",
            str(ckpt),
            "-o",
            str(tmp / "u.tif"),
            "--tile",
            "256",
            "--batch-size",
            "4",
            "--block",
            "2048",
            "--quiet",
        ]
    )
    job = job_seconds(err)
    bare, ntiles = bare_forward_seconds(side, 256, 0.25, 4, cfg, 3)
    rows.append(
        f"| overhead, U-Net w32 d4, {side}² px, tile 256, overlap 0.25 | job (ingest → COG) {job:.1f} s "
        f"/ bare forward over the same {ntiles} tiles {bare:.1f} s | **{job / bare:.2f}×** (target ≤ 1.10) |"
    )
    rows.append(
        f"| same, whole command incl. Prefect's ephemeral API start | {e2e:.1f} s / {bare:.1f} s "
        f"| {e2e / bare:.2f}× |"
    )

    io_row(args, tmp, rows)


def io_row(args: argparse.Namespace, tmp: Path, rows: list[str]) -> None:
    """2. I/O-bound throughput with the 1×1 convolution vs a plain copy."""
    side = 2048 if args.quick else 8192
    scene = write_scene(tmp / "gray.tif", 1, side)
    io_s, _, _ = run_cli(
        [
            "segment",
            str(scene),
            "-m",
            "arch:conv1x1",
            "--num-classes",
            "2",
            "-o",
            str(tmp / "c.tif"),
            "--tile",
            "512",
            "--batch-size",
            "8",
            "--quiet",
        ]
    )
    cp = copy_seconds(scene, tmp)
    mpx = side * side / 1e6
    rows.append(
        f"| I/O-bound, 1×1 conv, {mpx:.0f} Mpx single band | gigaseg {mpx / io_s:.1f} Mpx/s "
        f"({io_s:.1f} s) vs plain chunk copy {mpx / cp:.1f} Mpx/s ({cp:.1f} s) | "
        f"**{cp / io_s:.2f}** of the copy's speed |"
    )


def memory_rows(args: argparse.Namespace, tmp: Path, rows: list[str]) -> None:
    """3. Peak memory: 16 Mpx vs a large scene, same settings."""
    mem = {}
    for label, s in (("16 Mpx", 4096), (f"{args.large_side**2 / 1e9:.2f} Gpx", args.large_side)):
        if args.quick and s > 4096:
            s = 8192
            label = "67 Mpx"
        path = write_scene(tmp / f"mem{s}.tif", 1, s)
        secs, rss, _ = run_cli(
            [
                "segment",
                str(path),
                "-m",
                "arch:conv1x1",
                "--num-classes",
                "2",
                "-o",
                str(tmp / f"m{s}.tif"),
                "--tile",
                "512",
                "--quiet",
            ]
        )
        mem[label] = (rss, secs)
        path.unlink()
    (small_label, (small_rss, _)), (large_label, (large_rss, large_s)) = mem.items()
    rows.append(
        f"| peak RSS, 1×1 conv, default block {SegmentConfig.block} | "
        f"{small_label}: {small_rss / 2**20:.0f} MiB; "
        f"{large_label}: {large_rss / 2**20:.0f} MiB ({large_s:.0f} s) | "
        f"**{large_rss / small_rss:.2f}×** (target ≤ 1.25) |"
    )


if __name__ == "__main__":
    sys.exit(main())
