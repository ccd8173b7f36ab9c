"""Blending modes against one untiled pass, on a trained model and a real image.

For each tile size, overlap and blending mode (``gaussian``, ``crop``,
``constant``), the engine segments the image in memory
(:func:`pipeline.array_inference.segment_array`) and its probabilities are
compared with a single forward pass of the same model over the whole image (both
channels-last, as the engine runs): mean, 99th percentile and largest absolute
probability difference, and the share of pixels whose label differs. That
difference is what tiling adds, so the smaller the less the tiles show. A frame
of ``--frame`` px at the image's edge is left out (there the untiled pass
zero-pads and the engine reflects: padding, not tiling).

The peer bench does the same with seeded random weights; trained weights are the
case users meet. The default model and image are the ones ``make demo`` leaves in
``demo/``.

Run: ``python -m bench.blend_bench [--model CKPT] [--image TIF] [--side N]``;
results go to the "Blending modes" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("gaussian", "crop", "constant")


def compare(probs: np.ndarray, labels: np.ndarray, ref: np.ndarray, frame: int) -> dict[str, float]:
    """|Δp| (mean, p99, max) and % of labels differing from the untiled pass, inside the frame."""
    inner = (slice(frame, -frame or None), slice(frame, -frame or None))
    diff = np.abs(probs - ref)[(slice(None), *inner)]
    return {
        "mean": float(diff.mean()),
        "p99": float(np.quantile(diff, 0.99)),
        "max": float(diff.max()),
        "labels": float(100 * (labels[inner] != ref.argmax(0)[inner]).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "demo" / "unet_sample.safetensors")
    p.add_argument("--image", type=Path, default=ROOT / "demo" / "sample.tif")
    p.add_argument("--side", type=int, default=1536, help="side of the image's top-left square used (px)")
    p.add_argument("--tiles", default="256,128", help="tile sizes (comma list)")
    p.add_argument("--overlaps", default="0.25,0.125", help="overlaps (comma list)")
    p.add_argument("--frame", type=int, default=64, help="px at the image's edge left out")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    for path in (args.model, args.image):
        if not path.exists():
            print(f"blend_bench: {path}: not found (run `make demo` first, or pass --model / --image)")
            return 2

    import rasterio
    import torch

    from models.checkpoint import load_checkpoint
    from pipeline.array_inference import segment_array
    from pipeline.normalization import normalize

    model, card = load_checkpoint(args.model)
    model = model.eval().to(memory_format=torch.channels_last)
    with rasterio.open(args.image) as src:
        side = min(args.side, src.height, src.width)
        raw = src.read(window=rasterio.windows.Window(0, 0, side, side))
    x = normalize(raw, card.normalization)
    with torch.inference_mode():
        t = torch.from_numpy(x)[None].contiguous(memory_format=torch.channels_last)
        ref = torch.softmax(model(t).float(), dim=1)[0].numpy()

    rows = []
    for tile in (int(v) for v in args.tiles.split(",")):
        for overlap in (float(v) for v in args.overlaps.split(",")):
            for mode in MODES:
                t0 = time.perf_counter()
                res = segment_array(x, model, tile, overlap, mode, batch_size=4, with_probabilities=True)
                seconds = time.perf_counter() - t0
                err = compare(res.probabilities, res.labels, ref, args.frame)
                rows.append((tile, overlap, mode, seconds, err))
                print(f"tile {tile} overlap {overlap} {mode}: {seconds:.1f} s {err}", flush=True)

    lines = [
        "| tile | overlap | kept margin (px) | blend | mean abs Δp | p99 abs Δp | max abs Δp | labels ≠ (%) "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tile, overlap, mode, seconds, e in rows:
        margin = round(tile * overlap) // 2
        lines.append(
            f"| {tile} | {overlap} | {margin} | `{mode}` | {e['mean']:.2e} | {e['p99']:.2e} | {e['max']:.2e} "
            f"| {e['labels']:.4f} | {seconds:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        from bench.results import write_section

        cmd = "python -m bench.blend_bench" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        write_section(
            "Blending modes",
            f"Command: `{cmd}`  \nDate: {dt.datetime.now():%Y-%m-%d %H:%M}  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}  \n"
            f"Model: `{_shown(args.model)}` ({model.arch}, reach {model.reach} px, "
            f"{card.num_classes} classes); image: the top-left {side}² of `{_shown(args.image)}`. "
            f"Each row: the engine in memory (blocks of 4096, batch 4) against one untiled pass of the "
            f"same model over the whole square, both channels-last; a {args.frame}-px frame at the "
            f"image's edge left out. Kept margin: what `crop` discards of each tile side (half the "
            f"overlap).\n\n{table}\n",
        )
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
