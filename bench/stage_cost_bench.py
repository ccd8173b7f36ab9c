"""CPU-seconds per megapixel of each stage around the model, on the 1×1-conv scene (issue 23).

On a GPU the model's forward shrinks to a small part of the work, and what decides
throughput is the CPU work around it. This bench measures that work stage by stage
with the library's own functions, run **one after another** in a fresh process (no
I/O thread), so each stage's process CPU time (every thread's: torch's, GDAL's and the
codecs' included) is its own:

    check (header, model) → ingest → plan → per block: read, normalise, model forward,
    softmax / layout, blend + finish (the rest of the block's compute), write → export
    (labels COG: staging with MODE overviews, then the COG copy; its sidecars, STAC)

Each setting runs in its own child process (no GDAL block cache carried over; GDAL's cache
bounded as a command bounds it), twice,
alternating; the faster run of each is kept. Side by side in the same run:

- the scene read in place (a tiled GeoTIFF, the default) and copied (``--copy-input``);
- the whole job as the product runs it (:func:`pipeline.job.steps.segment`, its I/O
  thread overlapping reads and writes with the blocks), wall time and Mpx/s;
- a plain tile copy of the same file (every tile read and written DEFLATE-compressed
  by GDAL, as a COG of it would be) — the Mpx/s a pure I/O job reaches here.

With ``--baseline REV`` the in-place staged and segment rows also run with that
revision's code (a temporary git worktree), interleaved with this code's runs, and
the ratios are printed: the machine's state moves absolute figures by ±20% between
runs, a ratio from one run does not.

Run: ``python -m bench.stage_cost_bench [--mpx 64] [--repeats 2] [--baseline REV]``. Results are printed
and written to the "Cost per pixel" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from bench.baseline import checkout, python_path
from bench.devices import device_option, device_text
from bench.peers.fixtures import bench_cases, make_checkpoint, side_of, write_scene
from bench.results import command_line, current_commit, load_text, table_head, write_section
from pipeline.execution.heap_allocator import allocator_environment

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.05
"""CPU-seconds per Mpx outside the forward: the issue's bound."""
COPY_TARGET = 0.7
"""End-to-end Mpx/s ÷ a plain tile copy's: the issue's bound."""
STAGES = (
    "check", "ingest", "plan", "read", "normalise", "forward", "softmax", "blend_finish", "write", "export",
)  # fmt: skip
OUTSIDE = tuple(s for s in STAGES if s not in ("forward", "check"))
"""The stages counted against the target: all but the model's own forward and the model load."""


def _outside(cpu: dict[str, float]) -> float:
    """CPU seconds of the stages counted against the target (:data:`OUTSIDE`)."""
    return sum(cpu.get(k, 0.0) for k in OUTSIDE)


class StageClock:
    """Process CPU seconds (all threads) and wall seconds per stage, for stages run one at a time."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[stage] += time.process_time() - c0
            self.wall[stage] += time.perf_counter() - w0


def _config(scene: str, ckpt: str, out: Path, copy: bool, device: str = "cpu"):
    from pipeline.job.config import SegmentConfig

    return SegmentConfig(
        input=Path(scene), model=ckpt, output=out / "labels.tif", work_dir=out / "work", tile=512,
        overlap=0.25, blend="gaussian", batch_size=8, channels_last=True, quiet=True, copy_input=copy,
        threads=os.cpu_count(), device=device,
    )  # fmt: skip


def staged_run(
    scene: str, ckpt: str, out: Path, copy: bool, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """Every stage one after another, each under the clock (what :func:`child` runs for a ``staged`` row).

    On CUDA the forward waits for the device before and after, so its wall time is the
    GPU's work on the batch and no later stage pays for it.
    """
    import torch

    from pipeline.engine.predictor import TilePredictor
    from pipeline.execution.in_process import compute_block, predictor_for
    from pipeline.job.checks import check_inputs
    from pipeline.job.plan import plan_job
    from pipeline.job.steps import export, ingest_scene

    clock = StageClock()
    config = _config(scene, ckpt, out, copy, device)
    torch.set_num_threads(os.cpu_count() or 1)
    with clock("check"):
        checked = check_inputs(config)
    with clock("ingest"):
        scene_store = ingest_scene(config, checked)
    with clock("plan"):
        job = plan_job(config, checked, scene_store)
        predictor = predictor_for(job)

    model = predictor.model

    class TimedModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            on_cuda = x.device.type == "cuda"
            if on_cuda:
                torch.cuda.synchronize(x.device)  # the input's copy is the read's, not the forward's
            with clock("forward"):
                y = self.inner(x)
                if on_cuda:
                    torch.cuda.synchronize(x.device)
                return y

    class TimedPredictor(TilePredictor):
        def __call__(self, tiles: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            c0 = time.process_time()
            before = clock.cpu["forward"]
            try:
                return super().__call__(tiles, out)
            finally:
                clock.cpu["softmax"] += time.process_time() - c0 - (clock.cpu["forward"] - before)

    predictor.model = TimedModel()
    predictor.__class__ = TimedPredictor
    normalizer = job.normalizer()

    def timed_normalizer(raw, out=None):
        with clock("normalise"):
            return normalizer(raw, out=out)

    job.normalizer = lambda: timed_normalizer  # type: ignore[method-assign]
    for block in job.plan:
        with clock("read"):
            footprint = job.read(block.footprint)
        c0 = time.process_time()
        inner = sum(clock.cpu[s] for s in ("normalise", "forward", "softmax"))
        output = compute_block(job, block, predictor, read=lambda _region, f=footprint: f)
        inner = sum(clock.cpu[s] for s in ("normalise", "forward", "softmax")) - inner
        clock.cpu["blend_finish"] += time.process_time() - c0 - inner
        with clock("write"):
            job.store.write_block(block, output)
    with clock("export"):
        export(job)
    return {"cpu": dict(clock.cpu), "wall": dict(clock.wall)}


def segment_run(scene: str, ckpt: str, out: Path, copy: bool, device: str = "cpu") -> dict[str, float]:
    """The job as the product runs it: wall and CPU seconds of :func:`pipeline.job.steps.segment`."""
    from pipeline.job.steps import segment

    c0, w0 = time.process_time(), time.perf_counter()
    summary = segment(_config(scene, ckpt, out, copy, device))
    return {
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        **{k: v for k, v in summary.timings.items() if k != "tiles"},
    }


def tile_copy(scene: str, out: Path) -> dict[str, float]:
    """Every tile of the file read and written to a tiled, DEFLATE-compressed GeoTIFF by GDAL."""
    import rasterio.shutil

    c0, w0 = time.process_time(), time.perf_counter()
    rasterio.shutil.copy(
        scene, out / "copy.tif", driver="GTiff", tiled=True, blockxsize=512, blockysize=512,
        compress="DEFLATE", num_threads="ALL_CPUS", bigtiff="IF_SAFER",
    )  # fmt: skip
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


def child(kind: str, scene: str, ckpt: str, out: str, device: str = "cpu") -> None:
    """One measurement in this (fresh) process, set up as a command sets itself up; prints its JSON."""
    from pipeline.execution.openmp_spinning import bound_openmp_spinning
    from pipeline.execution.process_memory import bound_process_memory

    bound_openmp_spinning()  # before torch loads, as importing ``flows`` does for the command
    bound_process_memory()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if kind.startswith("staged"):
        result = staged_run(scene, ckpt, folder, copy=kind.endswith("copied"), device=device)
    elif kind.startswith("segment"):
        result = segment_run(scene, ckpt, folder, copy=kind.endswith("copied"), device=device)
    else:
        result = tile_copy(scene, folder)
    print("RESULT " + json.dumps(result))


def _in_child(kind: str, scene: Path, ckpt: Path, out: Path, root: Path = ROOT, device: str = "cpu") -> dict:
    """One measurement in a fresh process, with the code of the checkout at ``root``.

    gigaseg's runs start on the heap allocator the command picks (TCMalloc where installed,
    :mod:`pipeline.execution.heap_allocator`); the plain tile copy on the system's, as a user's.
    """
    env = {**os.environ, "PYTHONPATH": python_path(root)}
    if kind != "tile copy":
        env.update(allocator_environment())
    cmd = [sys.executable, "-m", "bench.stage_cost_bench", "--child", kind, str(scene), str(ckpt), str(out)]
    if device != "cpu":  # a baseline older than the option runs on the CPU only
        cmd += ["--device", device]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind}: {proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _total(result: dict) -> float:
    return float(result["wall"] if isinstance(result["wall"], float) else sum(result["wall"].values()))


BASELINE_KINDS = ("staged in place", "segment in place")
"""The rows run again with the baseline's code (``--baseline``)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mpx", type=float, default=64.0, help="scene size in megapixels")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    p.add_argument(
        "--baseline", metavar="REV",
        help="also run the staged and segment rows (read in place) with this git revision's code, "
        "interleaved, and print the ratios to it",
    )  # fmt: skip
    p.add_argument(
        "--device", default="cpu", type=device_option,
        help="cpu or cuda[:N] for gigaseg's runs (on CUDA the section is its own, with wall time per stage)",
    )  # fmt: skip
    p.add_argument("--child", nargs=4, metavar=("KIND", "SCENE", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child, device=args.device)
        return 0
    load_start = os.getloadavg()[0]
    case = next(c for c in bench_cases([args.mpx], []) if c.arch == "conv1x1")
    side = side_of(args.mpx)
    mpx = side * side / 1e6
    kinds = ("staged in place", "staged copied", "segment in place", "segment copied", "tile copy")
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gigaseg-stage-cost-") as tmp, checkout(args.baseline) as old:
        tmp_path = Path(tmp)
        scene = write_scene(tmp_path / "scene.tif", side)
        ckpt = make_checkpoint(case, tmp_path / "conv1x1.safetensors")
        runs = [(kind, ROOT) for kind in kinds]
        if old is not None:
            runs += [(f"{kind} @baseline", old) for kind in BASELINE_KINDS]
        for r in range(args.repeats):
            for name, root in runs:
                kind = name.removesuffix(" @baseline")
                out = tmp_path / f"{name.replace(' ', '_').replace('@', '')}_{r}"
                result = _in_child(kind, scene, ckpt, out, root, args.device)
                subprocess.run(["rm", "-rf", str(out)], check=True)
                if name not in best or _total(result) < _total(best[name]):
                    best[name] = result
                print(f"{name} #{r + 1}: {_total(result):.2f} s", file=sys.stderr)
    load_end = os.getloadavg()[0]
    body = report(best, mpx, side, args, load_start, load_end)
    print(body)
    if not args.no_record:
        write_section(section_name(args.device), body)
    return 0


def section_name(device: str) -> str:
    """The ``bench/RESULTS.md`` section of a run on ``device``: a GPU's never replaces the CPU's.

    >>> section_name("cpu"), section_name("cuda")
    ('Cost per pixel (issue 23)', 'Cost per pixel on a GPU (issue 23)')
    """
    return "Cost per pixel on a GPU (issue 23)" if device.startswith("cuda") else "Cost per pixel (issue 23)"


def report(
    best: dict[str, dict], mpx: float, side: int, args: argparse.Namespace, l0: float, l1: float
) -> str:
    """The section: CPU-s/Mpx per stage (in place, copied), then the end-to-end and copy rows."""
    commit = current_commit()
    on_gpu = args.device.startswith("cuda")
    allocator = "TCMalloc" if allocator_environment() else "the system's"
    argv = [a for a in (sys.argv[1:] if sys.argv[1:] else [])]
    lines = [
        f"`{command_line('bench.stage_cost_bench', argv)}` — {dt.date.today()}, commit {commit}, "
        f"{os.cpu_count()} cores, {load_text(l0, l1)}.",
        "",
        f"{mpx:.0f} Mpx ({side}²) single-band uint8 tiled DEFLATE GeoTIFF, the peer bench's 1×1 conv "
        "(2 classes, seeded weights), tile 512, overlap 0.25, gaussian, batch 8. Stages run one after "
        "another in a fresh process; CPU: process CPU time (all threads); fastest of "
        f"{args.repeats} runs per setting. Heap allocator of gigaseg's runs: {allocator}"
        " (the command's choice); of the tile copy: the system's. gigaseg's model runs on "
        f"{device_text(args.device)}"
        + (
            "; its forward waits for the GPU before and after (wall s: the stage's own wall time)."
            if on_gpu else "."
        ),
        "",
        *table_head("stage", "in place: CPU s", "CPU s / Mpx", *(["wall s"] if on_gpu else []),
                    "copied: CPU s", "CPU s / Mpx"),
    ]  # fmt: skip
    staged = best["staged in place"]["cpu"], best["staged copied"]["cpu"]
    walls = best["staged in place"]["wall"]
    for stage in STAGES:
        a, b = staged[0].get(stage, 0.0), staged[1].get(stage, 0.0)
        wall = f" {walls.get(stage, 0.0):.2f} |" if on_gpu else ""
        lines.append(f"| {stage} | {a:.2f} | {a / mpx:.4f} |{wall} {b:.2f} | {b / mpx:.4f} |")
    outside = [_outside(s) for s in staged]
    wall = f" {_outside(walls):.2f} |" if on_gpu else ""
    lines.append(
        f"| **outside the forward** (all but check and forward) | {outside[0]:.2f} | "
        f"**{outside[0] / mpx:.4f}** |{wall} {outside[1]:.2f} | **{outside[1] / mpx:.4f}** |"
    )
    seg_in, seg_copy, copy = best["segment in place"], best["segment copied"], best["tile copy"]
    lines += [
        "",
        *table_head("run (as the product runs it)", "wall s", "CPU s", "Mpx/s", "stages (wall s)"),
    ]
    for name, r in (("segment, in place", seg_in), ("segment, copied", seg_copy), ("plain tile copy", copy)):
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("wall", "cpu"))
        speed = mpx / r["wall"]
        lines.append(f"| {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {speed:.2f} | {stages or '–'} |")
    ratio = (mpx / seg_in["wall"]) / (mpx / copy["wall"])
    baseline = _baseline_lines(best, mpx, args.baseline)
    lines += [
        "",
        f"- CPU-seconds per Mpx outside the forward, read in place: **{outside[0] / mpx:.3f}** "
        f"(target ≤ {TARGET}); copied: {outside[1] / mpx:.3f}",
        f"- end-to-end Mpx/s ÷ the plain tile copy's: **{ratio:.2f}** (target ≥ {COPY_TARGET})",
        f"- reading in place instead of copying: segment {seg_copy['wall'] / seg_in['wall']:.2f}× faster "
        f"(ingest {seg_copy.get('ingest', 0):.2f} s → {seg_in.get('ingest', 0):.2f} s)",
        *baseline,
    ]
    return "\n".join(lines)


def _baseline_lines(best: dict[str, dict], mpx: float, rev: str | None) -> list[str]:
    """Per stage and in all, this code's CPU against the baseline's, from the same run (interleaved)."""
    if rev is None:
        return []
    new, old = best["staged in place"]["cpu"], best["staged in place @baseline"]["cpu"]
    outside_new, outside_old = _outside(new), _outside(old)
    stages = ", ".join(f"{k} {old.get(k, 0.0) / mpx:.4f} → {new.get(k, 0.0) / mpx:.4f}" for k in STAGES)
    seg_new, seg_old = best["segment in place"], best["segment in place @baseline"]
    return [
        f"- against `{rev}` in the same run (read in place, interleaved): outside the forward "
        f"{outside_old / mpx:.4f} → {outside_new / mpx:.4f} CPU-s/Mpx "
        f"(**{outside_new / outside_old:.2f}×**); "
        f"segment {seg_old['wall']:.2f} → {seg_new['wall']:.2f} s wall, {seg_old['cpu']:.2f} → "
        f"{seg_new['cpu']:.2f} s CPU",
        f"- per stage, CPU-s/Mpx `{rev}` → this code: {stages}",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
