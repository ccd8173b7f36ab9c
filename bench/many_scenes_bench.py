"""Many scenes, one command: ``gigaseg segment`` over N scenes at once against N separate commands.

Side by side on the same generated scenes and model: the wall time of one
``gigaseg segment S1 … SN --output-dir DIR`` (one Ray, one actor pool, the model loaded
once per actor, scenes interleaved on the pool) and of N ``gigaseg segment Si -o …``
commands run one after another (each starting its own Ray, pool and model). Both are
whole commands as a user runs them (Python start, Prefect, MLflow tracking unless
``--no-track``); the outputs of the two are checked to be identical pixel for pixel.

The model is a small seeded untrained U-Net (``--width``), so that the per-command
costs the batch removes are visible next to the compute. Run: ``python -m
bench.many_scenes_bench`` (20 scenes of 2048² = 4 Mpx; writes the "Many scenes"
section of ``bench/RESULTS.md``) or ``--quick`` (3 scenes of 512², prints only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from bench.baseline import python_path
from bench.results import table_head, write_section
from flows.prefect_server import MODE_ENV
from models import build
from models.checkpoint import card_for, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_scenes(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` 3-band uint16 GeoTIFFs of ``side``² with smooth random structure (tiled, georeferenced)."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(count):
        rng = np.random.default_rng(i)
        coarse = rng.random((3, side // 32 + 1, side // 32 + 1))
        data = np.kron(coarse, np.ones((32, 32)))[:, :side, :side] * 2500
        data = (data + rng.random((3, side, side)) * 500 + 100).astype(np.uint16)
        path = folder / f"scene_{i:02d}.tif"
        profile = {
            "driver": "GTiff", "height": side, "width": side, "count": 3, "dtype": "uint16",
            "tiled": True, "blockxsize": 256, "blockysize": 256, "crs": "EPSG:32633",
            "transform": Affine(10.0, 0, 400_000.0 + i * side * 10, 0, -10.0, 5_000_000.0),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        scenes.append(path)
    return scenes


def write_model(path: Path, width: int) -> Path:
    """A seeded untrained U-Net (depth 2) for 3 bands and 4 classes, tile 256."""
    torch.manual_seed(0)
    net = build("unet", in_channels=3, num_classes=4, width=width, depth=2)
    card = card_for(net, tile_size=256, normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5})
    return save_checkpoint(path, net, card)


def _gigaseg(args: list[str], env: dict[str, str]) -> float:
    """Run one ``gigaseg`` command to completion; its wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(
            f"gigaseg {' '.join(args[:3])} …: exit {done.returncode}\n{done.stderr.decode()[-2000:]}"
        )
    return time.perf_counter() - t0


def _same_pixels(a: Path, b: Path) -> bool:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        return np.array_equal(x.read(), y.read())


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, float | bool]:
    """Separate commands, then one command, on the same scenes; whether their outputs agree."""
    scenes = write_scenes(tmp / "scenes", args.scenes, args.side)
    model = write_model(tmp / "unet.safetensors", args.width)
    env = {
        **os.environ,
        "PYTHONPATH": python_path(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    common = ["-m", str(model), "--quiet", *(["--no-track"] if args.no_track else [])]
    (tmp / "separate").mkdir()
    (tmp / "batch").mkdir()
    separate = 0.0
    for s in scenes:
        separate += _gigaseg(["segment", str(s), "-o", str(tmp / "separate" / s.name), *common], env)
    batch = _gigaseg(["segment", *map(str, scenes), "--output-dir", str(tmp / "batch"), *common], env)
    same = all(_same_pixels(tmp / "separate" / s.name, tmp / "batch" / s.name) for s in scenes)
    return {"separate": separate, "batch": batch, "same": same}


def report(args: argparse.Namespace, m: dict[str, float | bool]) -> str:
    """The section: both wall times, per scene, and the ratio against its target."""
    n, mpx = args.scenes, args.scenes * args.side**2 / 1e6
    rows = [
        (f"{n} separate `gigaseg segment` commands", m["separate"]),
        ("one command, one pool", m["batch"]),
    ]
    table = "\n".join(
        table_head("run", "seconds", "s / scene", "Mpx/s")
        + [f"| {name} | {s:.1f} | {s / n:.2f} | {mpx / s:.3f} |" for name, s in rows]
    )
    if os.environ.get("PREFECT_API_URL"):
        prefect = "a Prefect server (PREFECT_API_URL)"
    elif os.environ.get(MODE_ENV) == "ephemeral":
        prefect = "Prefect's ephemeral API"
    else:
        prefect = "the shared local Prefect server (started by the first command, reused by the rest)"
    return (
        f"`python -m bench.many_scenes_bench{' --quick' if args.quick else ''}` — {dt.date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
        f"torch {torch.__version__}; {n} scenes of {args.side}² (3 bands), untrained U-Net w{args.width} d2, "
        f"tile 256, default blocks and workers (Ray); {prefect}, MLflow "
        f"{'off' if args.no_track else 'on (SQLite)'}.\n\n{table}\n\n"
        f"- one command vs separate commands: **{m['separate'] / m['batch']:.2f}×** less wall time "
        f"(target ≥ 3×); outputs identical pixel for pixel: **{'yes' if m['same'] else 'NO'}**\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--side", type=int, default=2048, help="scene side in pixels (2048: 4 Mpx)")
    parser.add_argument("--width", type=int, default=8, help="U-Net width (compute per pixel)")
    parser.add_argument("--no-track", action="store_true", help="both sides without MLflow runs")
    parser.add_argument("--quick", action="store_true", help="3 scenes of 512², results not written")
    args = parser.parse_args()
    if args.quick:
        args.scenes, args.side = 3, 512
    with tempfile.TemporaryDirectory() as tmp_name:
        measured = measure(args, Path(tmp_name))
    body = report(args, measured)
    print(body)
    if not args.quick:
        write_section("Many scenes", body)


if __name__ == "__main__":
    main()
