"""The whole ``gigaseg segment`` command on TCMalloc against glibc's allocator, side by side.

Runs the command as a user does (``python -m flows.cli segment … --workers 0 --no-track``,
a fresh process each, the shared local Prefect server warm) on the peer bench's scenes
and seeded weights: the 1×1 conv at ``--mpx`` (the I/O-bound case of issue 23) and the
U-Net w16 d3 at ``--unet-mpx`` (compute-bound). Each round runs both allocators,
``GIGASEG_ALLOCATOR=system`` and the default (TCMalloc), in alternation. Reports per case
and allocator the fastest command (wall seconds of the process, its job's seconds from
the summary line) and the largest peak RSS (``wait4``: the process itself, across the
command's restart onto TCMalloc), then TCMalloc's ratios. Run:
``python -m bench.allocator_bench [--mpx 64] [--unet-mpx 4] [--rounds 3] [--no-record]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import python_path
from bench.peers.fixtures import bench_cases, make_checkpoint, write_scene
from bench.results import command_line, current_commit, load_text, table_head, write_section
from pipeline.execution.heap_allocator import SETTING, tcmalloc_library

ROOT = Path(__file__).resolve().parents[1]
ALLOCATORS = ("system", "tcmalloc")
SECTION = "Heap allocator"


@dataclass
class Run:
    """One command: its wall seconds, its job's seconds and its peak RSS (MiB)."""

    wall: float
    job: float
    rss_mib: float


def run_command(argv: list[str], allocator: str, cwd: Path) -> Run:
    """``python -m flows.cli ARGV`` on ``allocator``, timed, its peak RSS read when it ends.

    Its stderr goes to a file, so a chatty command cannot fill a pipe nobody reads while
    ``wait4`` waits for it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SETTING)}
    env.update({"PYTHONPATH": python_path(ROOT), SETTING: allocator})
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
            stderr=log, text=True,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        stderr = log.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"gigaseg {' '.join(argv)} on {allocator}: exit {proc.returncode}\n{stderr[-3000:]}"
        )
    job = re.search(r"\), ([0-9.]+) s, ", stderr)
    return Run(wall, float(job.group(1)) if job else float("nan"), usage.ru_maxrss / 1024)


def measure(mpx: float, unet_mpx: float, rounds: int, tmp: Path) -> dict[str, dict[str, list[Run]]]:
    """Every case's command on both allocators, ``rounds`` times, in alternation."""
    cases = [c for c in bench_cases([mpx], [unet_mpx] if unet_mpx > 0 else []) if c.sizes]
    runs: dict[str, dict[str, list[Run]]] = {}
    for case in cases:
        side = case.sizes[0]
        scene = write_scene(tmp / f"{case.arch}.tif", side)
        ckpt = make_checkpoint(case, tmp / f"{case.arch}.safetensors")
        argv = ["segment", str(scene), "-m", str(ckpt), "-o", str(tmp / "out.tif"), "--overwrite"]
        argv += ["--workers", "0", "--no-track", "--tile", str(case.tile), "--batch-size", str(case.batch)]
        run_command(argv, "system", tmp)  # the shared Prefect server warm, the files in the page cache
        name = f"{case.name}, {side * side / 1e6:.0f} Mpx"
        runs[name] = {a: [] for a in ALLOCATORS}
        for r in range(rounds):
            for allocator in ALLOCATORS:
                run = run_command(argv, allocator, tmp)
                runs[name][allocator].append(run)
                print(
                    f"{name} {allocator} #{r + 1}: {run.wall:.2f} s, {run.rss_mib:.0f} MiB", file=sys.stderr
                )
    return runs


def report(runs: dict[str, dict[str, list[Run]]], argv: list[str], load: tuple[float, float]) -> str:
    """The table (fastest wall and job, largest peak per case and allocator) and TCMalloc's ratios."""
    rows = table_head("case", "allocator", "command s", "job s", "peak RSS")
    lines = []
    for name, by in runs.items():
        best = {
            a: (min(r.wall for r in by[a]), min(r.job for r in by[a]), max(r.rss_mib for r in by[a]))
            for a in by
        }
        for allocator, (wall, job, rss) in best.items():
            spread = f"{wall:.2f} ({wall:.2f}–{max(r.wall for r in by[allocator]):.2f})"
            rows.append(f"| {name} | {allocator} | {spread} | {job:.2f} | {rss:,.0f} MiB |")
        (sw, sj, sr), (tw, tj, tr) = best["system"], best["tcmalloc"]
        lines.append(
            f"- {name}: TCMalloc ÷ glibc: command **{tw / sw:.2f}×**, job {tj / sj:.2f}×, "
            f"peak RSS **{tr / sr:.2f}×**"
        )
    return (
        f"`{command_line('bench.allocator_bench', argv)}` — {dt.date.today()}, commit {current_commit()}, "
        f"{os.cpu_count()} cores, {load_text(*load)}; TCMalloc at {tcmalloc_library()}.\n\n"
        f"The whole `gigaseg segment --workers 0 --no-track` (a fresh process each, imports and the restart "
        f"onto TCMalloc included; the shared Prefect server warm) with `GIGASEG_ALLOCATOR=system` and with "
        f"the default, in alternation; the peer bench's scenes and seeded weights, its tile and batch per "
        f"model. Seconds: the fastest run (range); job: the stages' seconds from the summary line; peak "
        f"RSS: the largest.\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpx", type=float, default=64.0, help="1×1-conv scene size in megapixels")
    parser.add_argument(
        "--unet-mpx", type=float, default=4.0, help="U-Net scene size in megapixels (0: none)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-record", action="store_true", help="print only; leave bench/RESULTS.md as it is"
    )
    args = parser.parse_args(argv)
    if tcmalloc_library() is None:
        print("allocator_bench: no TCMalloc installed (apt install libtcmalloc-minimal4)", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gigaseg-allocator-") as tmp:
        runs = measure(args.mpx, args.unet_mpx, args.rounds, Path(tmp))
    text = report(runs, sys.argv[1:] if argv is None else argv, (load_start, os.getloadavg()[0]))
    print(text)
    if not args.no_record:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
