"""Running one row in a fresh child process: its seconds and peak memory, killed past a time or memory cap.

A fresh process per row makes its peak RSS its own (whole process, imports
included); the child measures itself (:mod:`.child`), the parent watches the RSS
summed over the child's process tree to enforce the cap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.baseline import python_path
from bench.peers.rows import RowSpec
from pipeline.execution.heap_allocator import allocator_environment
from pipeline.execution.openmp_spinning import openmp_environment

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "RESULT "
"""Starts the stdout line that carries the child's result (JSON) to the parent."""


@dataclass
class RowResult:
    """What one row's run (or its merged repeats) came to: its figures when ``status`` is "ok"."""

    status: str  # "ok", or why not
    seconds: float = math.nan
    rss: float = math.nan
    read_seconds: float | None = None
    gpu_busy: float | None = None
    stages: dict[str, float] | None = None
    out: Path | None = None
    runs: list[float] = field(default_factory=list)
    """Seconds of every run that finished (repeats); ``seconds`` is their minimum."""
    failed_runs: list[str] = field(default_factory=list)
    """Why the repeats that did not finish stopped."""


def merge_runs(results: list[RowResult]) -> RowResult:
    """One row's repeats as one result: the fastest run's seconds (and stages), the largest peak RSS.

    A row is ok when any run finished; the others' failures stay listed. No run
    finished: the first failure.
    """
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return results[0]
    best = min(ok, key=lambda r: r.seconds)
    return RowResult(
        "ok",
        seconds=best.seconds,
        rss=max(r.rss for r in ok),
        read_seconds=best.read_seconds,
        gpu_busy=best.gpu_busy,
        stages=best.stages,
        out=ok[0].out,
        runs=[r.seconds for r in ok],
        failed_runs=[r.status for r in results if r.status != "ok"],
    )


def _tree_rss(ps: psutil.Process) -> int:
    """RSS summed over a process and its descendants (bytes)."""
    return ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))


def _watch(proc: subprocess.Popen, timeout: float, cap_bytes: int) -> tuple[int, str | None]:
    """Wait for the child, sampling its tree's RSS every 0.1 s; kill it past ``timeout`` or ``cap_bytes``.

    Returns the peak RSS seen and why the child was killed (None: it ended by itself).
    """
    import psutil

    ps = psutil.Process(proc.pid)
    t0, peak, why = time.perf_counter(), 0, None
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # the child ended between the poll and the reading
            peak = max(peak, _tree_rss(ps))
        if peak > cap_bytes:
            cap = cap_bytes / 2**30
            why = f"out of memory (passed the {cap:.0f} GiB cap after {time.perf_counter() - t0:.0f} s)"
        elif time.perf_counter() - t0 > timeout:
            why = f"timed out (> {timeout:.0f} s)"
        if why:
            for child in ps.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            return peak, why
        time.sleep(0.1)
    return peak, None


def _read_result(proc: subprocess.Popen, out: Path, peak: int) -> RowResult:
    """The finished child's result line, or why it failed (the last line of its stderr)."""
    stdout, stderr = proc.communicate()
    found = [x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not found:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        if "MemoryError" in stderr or proc.returncode in (-9, 137):
            return RowResult(f"out of memory ({last[:80]})", rss=peak)
        return RowResult(f"failed: {last[:120]}", rss=peak)
    r = json.loads(found[-1][len(RESULT_PREFIX) :])
    return RowResult(
        "ok", seconds=r["seconds"], rss=r["rss"], read_seconds=r.get("read_seconds"),
        gpu_busy=r.get("gpu_busy"), stages=r.get("stages"), out=out, runs=[r["seconds"]],
    )  # fmt: skip


def run_row(spec: RowSpec, timeout: float, cap_bytes: int) -> RowResult:
    """Run one row in a fresh process, killing it past ``timeout`` or ``cap_bytes`` of RSS.

    gigaseg's rows start with the OpenMP setting the ``gigaseg`` command makes before torch
    loads (:mod:`pipeline.execution.openmp_spinning`); the child has torch loaded before
    any row's code runs. The cap applies to the RSS summed over the child and all its descendants (Ray's
    raylet, GCS and workers for the Ray row), sampled every 0.1 s.
    """
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.peer_bench", "--child", spec.to_json()]
    env = {**os.environ, "PYTHONPATH": python_path(ROOT)}
    if spec.row.startswith("gigaseg"):  # as the gigaseg command sets its process up; peers keep the defaults
        env.update({**openmp_environment(), **allocator_environment()})
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, why = _watch(proc, timeout, cap_bytes)
    if why:
        return RowResult(why, rss=peak)
    return _read_result(proc, out, peak)


@dataclass
class Measured:
    """One row's merged result on one scene of one case, with its seam error (None: not measured)."""

    case: str
    """The case's architecture name."""
    side: int
    row: str
    """The row's name, with `` AMP`` for its AMP run."""
    res: RowResult
    err: dict[str, float] | None = None

    @property
    def mpx(self) -> float:
        return self.side**2 / 1e6
