"""The medical demo as a benchmark: MNI152 GM/WM (one hemisphere held out) and the shared medical volumes.

Run: ``python -m bench.volume_demo [--steps N]``; writes the "Volumes" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from bench.results import command_line, load_text, table_head, write_section
from pipeline.demos.volume_demo import run_demo

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


HEADER = "\n".join(
    table_head(
        "case", "shape", "held out", "Dice per class", "epochs × steps (kept)", "train (s)", "segment (s)",
        "label volumes (mL)",
    )
)  # fmt: skip


def _row(r) -> str:
    dice = ", ".join(f"{k} {v:.3f}" for k, v in r.dice.items())
    ml = ", ".join(f"{k} {v:.0f}" for k, v in r.segment.label_volumes_ml.items())
    return (
        f"| {r.name} | {'×'.join(map(str, r.shape))} | {r.holdout} | {dice} | "
        f"{r.epochs} × {r.steps_per_epoch} ({r.best_epoch}) | {r.train_seconds:.0f} | "
        f"{r.segment.seconds:.1f} | {ml} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--steps", type=int, default=400, help="optimiser steps, in epochs of at most 50 (rounded up)"
    )
    parser.add_argument("--cases", help="comma-separated: mni152,hippocampus,ct (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gigaseg-volume-demo"))
    args = parser.parse_args()
    names = args.cases.split(",") if args.cases else None
    load0 = os.getloadavg()[0]
    command = command_line(
        "bench.volume_demo", ["--steps", str(args.steps), *(["--cases", args.cases] if args.cases else [])]
    )

    def record(r) -> None:
        body = "\n".join(
            [
                f"Command: `{command}`  ",
                f"Date: {time.strftime('%Y-%m-%d %H:%M')}  ",
                f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU, "
                f"torch {torch.__version__}; shared with other work: {load_text(load0, os.getloadavg()[0])} "
                "(times are wall clock under that load)  ",
                METHOD,
                "",
                HEADER,
                _row(r),
            ]
        )
        write_section(f"Volumes: {r.name}", body)
        print(body, flush=True)

    run_demo(
        args.workdir,
        SHARED if SHARED.is_dir() else None,
        steps=args.steps,
        log=print,
        names=names,
        on_result=record,
    )


METHOD = (
    "A width-4, depth-2 3D U-Net (zero padding) trained from scratch by `gigaseg train`'s trainer "
    "(`pipeline.training.trainer.fit`: random patches of 32 voxels a side, or the training part's "
    "extent where "
    "thinner, drawn inside the training part; batch 2; 90° rotations, flips, intensity jitter; "
    "cross-entropy; AdamW one-cycle, lr 3e-3; epochs of 50 steps, the epoch with the best mIoU on a "
    "validation strip kept: the 20% of the training part next to the held-out part along the same axis). "
    "The held-out part's labels reach neither the loss nor that choice. Then `segment` over the whole "
    "volume (48³ tiles, 25% overlap, Gaussian blending, 64³ blocks) into a NIfTI with the input's affine; "
    "Dice on the held-out voxels only. MNI152: nilearn's T1 template at 2 mm, labels from its GM/WM "
    "maps (≥ 0.5, larger wins). hippocampus / ct: `../shared/data/medical` (ct: the three largest "
    "reference labels + the rest merged, card normalisation = HU window [-200, 300]; others: per-volume "
    "z-score)."
)


if __name__ == "__main__":
    main()
