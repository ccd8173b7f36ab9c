"""Cost of every registered architecture: parameters, forward GFLOPs, CPU throughput.

For each model in its canonical configuration (the paper's network) at 512×512
(3D models: 96³), batch 1, float32, inference mode:

- parameters (trainable);
- forward GFLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  meta device (a multiply-add counts as 2 FLOPs; convolutions and matrix
  products only, so element-wise work is left out);
- CPU forward throughput in megapixels (3D: megavoxels) of output per second:
  one warm-up forward, then the median of up to three timed forwards (fewer
  when one forward takes long, so the whole run stays within a few minutes).

Run: ``python -m bench.models_bench [--quick] [--models a,b] [--no-record]``.
``--quick`` uses 256×256 / 48³ inputs and one timed forward (a smoke test of the
bench). Results are printed and written to the "Models" section of
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

import models
from bench.results import command_line, load_text, table_head, write_section

SIDE_2D, SIDE_3D = 512, 96
QUICK_SIDE_2D, QUICK_SIDE_3D = 256, 48
TIME_BUDGET_S = 30.0  # per model, for the timed repeats after the warm-up


@dataclass
class Measurement:
    """One model's row."""

    name: str
    size: tuple[int, ...]
    params: int
    gflops: float
    seconds: float
    repeats: int

    @property
    def throughput(self) -> float:
        """Output megapixels (megavoxels) per second."""
        pixels = 1
        for s in self.size:
            pixels *= s
        return pixels / 1e6 / self.seconds


def count_gflops(name: str, size: tuple[int, ...]) -> float:
    """Forward GFLOPs of the canonical ``name`` at ``size``, counted without computing."""
    with torch.device("meta"):
        model = models.build(name).eval()
        x = torch.empty(1, model.in_channels, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def time_forward(name: str, size: tuple[int, ...], max_repeats: int) -> tuple[float, int]:
    """(median seconds of a forward, timed repeats) after one warm-up forward."""
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = torch.randn(1, model.in_channels, *size)
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)  # warm-up: allocator, kernel selection
        warm = time.perf_counter() - start
        repeats = max(1, min(max_repeats, int(TIME_BUDGET_S / max(warm, 1e-6))))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


def measure(name: str, quick: bool) -> Measurement:
    """Parameters, GFLOPs and timing of the canonical ``name``."""
    spec = models.get_spec(name)
    side = (
        (QUICK_SIDE_3D if quick else SIDE_3D)
        if spec.spatial_dims == 3
        else (QUICK_SIDE_2D if quick else SIDE_2D)
    )
    size = (side,) * spec.spatial_dims
    with torch.device("meta"):
        params = sum(p.numel() for p in models.build(name).parameters())
    gflops = count_gflops(name, size)
    seconds, repeats = time_forward(name, size, 1 if quick else 3)
    return Measurement(name, size, params, gflops, seconds, repeats)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sig(x: float) -> str:
    """Three significant digits, without exponents."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(rows: list[Measurement]) -> str:
    """The results as a markdown table."""
    lines = table_head("model", "input", "params", "GFLOPs", "forward (s)", "throughput", "timed runs")
    for r in rows:
        unit = "Mvox/s" if len(r.size) == 3 else "Mpx/s"
        params = f"{r.params / 1e6:.2f}M" if r.params >= 10_000 else str(r.params)
        lines.append(
            f"| `{r.name}` | {'×'.join(map(str, r.size))} | {params} | "
            f"{r.gflops:.1f} | {_sig(r.seconds)} | {_sig(r.throughput)} {unit} | {r.repeats} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256² / 48³ inputs, one timed forward")
    p.add_argument("--models", help="comma-separated registry names (default: all)")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    names = args.models.split(",") if args.models else models.names()
    for name in names:
        models.get_spec(name)  # fail early on a typo
    load_before = os.getloadavg()[0]
    started = dt.datetime.now()
    rows = []
    for name in names:
        row = measure(name, args.quick)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    load_after = os.getloadavg()[0]
    result = table(rows)
    print()
    print(result)
    if not args.no_record:
        options = (["--quick"] if args.quick else []) + (["--models", args.models] if args.models else [])
        command = command_line("bench.models_bench", options)
        header = (
            f"Command: `{command}`  \n"
            f"Date: {started:%Y-%m-%d %H:%M}  \n"
            f"Machine: {_cpu_name()}, {os.cpu_count()} CPU cores "
            f"(torch uses {torch.get_num_threads()} threads), no GPU, torch {torch.__version__}; "
            f"shared with other work: {load_text(load_before, load_after)}  \n"
            "Canonical configurations (the papers' networks), batch 1, float32, inference mode. "
            "GFLOPs from `FlopCounterMode` (multiply-add = 2). Throughput counts output "
            "pixels (voxels): median of the timed forwards after one warm-up. The valid-padded "
            "U-Nets compute a mirrored context margin around each tile "
            "(512² → 700², 96³ → 188³), which their GFLOPs include."
        )
        write_section("Models", f"{header}\n\n{result}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
