"""The output store's layout on disk: chunk files against Zarr shards, side by side (issue 23).

A label array of ``--side``² written block by block (4096² blocks of 512² chunks, the
store's defaults, the store's codec), then read the ways the pipeline reads it: the COG
export's 512-row strips across the whole width, and block-sized regions that cut chunks
(map-back, region metrics). Three layouts, each in its own temporary folder, interleaved
over ``--repeats`` rounds (fastest kept):

- ``chunks``: one file per 512² chunk (the store before 2026-12-06);
- ``block shards``: one shard per block (what a store on object storage keeps);
- ``chunk-row shards``: one shard per row of a block's chunks (what a store on disk keeps).

Run: ``python -m bench.store_layout_bench`` (records the ``Output store: shards`` section
of bench/RESULTS.md unless ``--no-record``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import zarr

from bench.results import command_line, current_commit, load_text, table_head, write_section
from pipeline.stores.output import COMPRESSORS

BLOCK, CHUNK, STRIP = 4096, 512, 512
LAYOUTS = {
    "chunks": None,
    "block shards": (BLOCK, BLOCK),
    "chunk-row shards": (CHUNK, BLOCK),
}


def class_map(side: int, noise: float, seed: int = 0) -> np.ndarray:
    """A 4-class map of 64-px patches with a fraction ``noise`` of single pixels changed at random."""
    rng = np.random.default_rng(seed)
    cells = -(-side // 64)
    labels = np.kron(rng.integers(0, 4, (cells, cells)), np.ones((64, 64), np.uint8))[:side, :side]
    noisy = rng.random((side, side)) < noise
    labels[noisy] = rng.integers(0, 4, int(noisy.sum()))
    return labels.astype(np.uint8)


def _clock(work) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - c0, time.perf_counter() - t0


def one_round(labels: np.ndarray, shards: tuple[int, int] | None) -> dict[str, tuple[float, float]]:
    """Write every block, read every strip, read every block's inner region: (CPU s, wall s) each."""
    side = labels.shape[0]
    folder = tempfile.mkdtemp(prefix="gigaseg-layout-")
    try:
        array = zarr.open_group(folder, mode="w").create_array(
            "labels", shape=labels.shape, chunks=(CHUNK, CHUNK), shards=shards, dtype="uint8",
            fill_value=255, compressors=COMPRESSORS,
        )  # fmt: skip
        blocks = [(r, c) for r in range(0, side, BLOCK) for c in range(0, side, BLOCK)]

        def write() -> None:
            for r, c in blocks:
                array[r : r + BLOCK, c : c + BLOCK] = labels[r : r + BLOCK, c : c + BLOCK]

        def strips() -> None:
            for r in range(0, side, STRIP):
                np.asarray(array[r : r + STRIP, :])

        def regions() -> None:  # cut chunks on every side, as a resampled or metric region does
            for r, c in blocks:
                np.asarray(array[r + 100 : r + BLOCK - 100, c + 50 : c + BLOCK - 50])

        timings = {"write": _clock(write), "strips": _clock(strips), "regions": _clock(regions)}
        assert np.array_equal(np.asarray(array[...]), labels)
        return timings
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(
    best: dict[str, dict[str, tuple[float, float]]],
    side: int,
    noise: float,
    argv: list[str],
    l0: float,
    l1: float,
) -> str:
    """The section: CPU and wall seconds per layout and operation, each layout's CPU against ``chunks``."""
    commit = current_commit()
    mpx = side * side / 1e6
    lines = [
        f"`{command_line('bench.store_layout_bench', argv)}` — {dt.date.today()}, commit {commit}, "
        f"{os.cpu_count()} cores, {load_text(l0, l1)}.",
        "",
        f"A {mpx:.0f} Mpx ({side}²) uint8 class map (4 classes, 64-px patches, "
        f"{noise:.0%} of the pixels changed at random), "
        f"{BLOCK}² blocks of {CHUNK}² chunks, the store's codec (Blosc zstd-3, bit shuffle); "
        f"write: every block; strips: every {STRIP}-row strip across the width (the COG export); "
        "regions: every block less 100 / 50 px on each side (cuts chunks). "
        "CPU s / wall s, fastest of the rounds.",
        "",
        *table_head("layout", "write", "strips", "regions", "CPU vs chunks (write / strips / regions)"),
    ]
    base = best["chunks"]
    for name, t in best.items():
        cells = [f"{t[k][0]:.2f} / {t[k][1]:.2f}" for k in ("write", "strips", "regions")]
        ratios = " / ".join(f"{t[k][0] / base[k][0]:.2f}×" for k in ("write", "strips", "regions"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=16384, help="side of the square label array (px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.01, help="fraction of pixels set to a random class")
    p.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = p.parse_args(argv)
    labels = class_map(args.side, args.noise)
    l0 = os.getloadavg()[0]
    best: dict[str, dict[str, tuple[float, float]]] = {}
    for r in range(args.repeats):
        for name, shards in LAYOUTS.items():
            got = one_round(labels, shards)
            print(
                f"{name} #{r + 1}: " + ", ".join(f"{k} {v[0]:.2f} CPU-s" for k, v in got.items()),
                file=sys.stderr,
            )
            kept = best.setdefault(name, got)
            for k, v in got.items():
                if v[0] < kept[k][0]:
                    kept[k] = v
    body = report(best, args.side, args.noise, sys.argv[1:] if argv is None else argv, l0, os.getloadavg()[0])
    print(body)
    if not args.no_record:
        write_section("Output store: shards", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
