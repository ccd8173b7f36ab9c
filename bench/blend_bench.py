"""Blending modes against one untiled pass, on a trained model and a real image.

For each tile size, overlap and blending mode (``gaussian``, ``crop``,
``constant``), the engine segments the image in memory
(:func:`pipeline.engine.in_memory.segment_array`) and its probabilities are
compared with a single forward pass of the same model over the whole image (both
channels-last, as the engine runs): mean, 99th percentile and largest absolute
probability difference, and the share of pixels whose label differs. That
difference is what tiling adds, so the smaller the less the tiles show. A frame
of ``--frame`` px at the image's edge is left out (there the untiled pass
zero-pads and the engine reflects: padding, not tiling).

Seam contrast says how much the tile edges stand out without an untiled pass to
compare with: the mean probability step across the lines where ``crop`` switches
tiles ÷ the mean step across every line. It is the measure that matters for
models with global pooling, whose untiled pass pools over the whole image and so
differs from any tiling everywhere.

The peer bench does the same with seeded random weights; trained weights are the
case users meet. The default model and image are the ones ``make demo`` leaves in
``demo/``.

Run: ``python -m bench.blend_bench [--models CKPT,…] [--image TIF] [--side N]``;
results go to the "Blending modes" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.results import command_line, table_head
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.grid import TileGrid

if TYPE_CHECKING:
    from models.wrapper import SegmentationModel

ROOT = Path(__file__).resolve().parents[1]
MODES = ("gaussian", "crop", "constant")


def seam_contrast(probs: np.ndarray, lines: np.ndarray, frame: int) -> float:
    """Mean |step| of the probabilities across ``lines`` ÷ the mean |step| across every line (both axes).

    ``lines`` are the positions where neighbouring tiles' kept parts meet (see
    :func:`kept_edges`); a step there is a seam a viewer sees. 1 means the tile
    edges do not stand out from the image's own texture; the untiled pass is 1 up
    to chance.
    """
    ratios = []
    for axis in (1, 2):
        steps = np.abs(np.diff(probs, axis=axis))  # step i lies between pixels i and i + 1
        n = steps.shape[axis]
        at = lines[(lines - 1 >= frame) & (lines - 1 < n - frame)] - 1
        inner = np.take(steps, np.arange(frame, n - frame), axis=axis)
        ratios.append(float(np.take(steps, at, axis=axis).mean() / max(inner.mean(), 1e-12)))
    return float(np.mean(ratios))


def kept_edges(window: BlendWindow, axis: int = 0) -> np.ndarray:
    """Where a ``crop`` window switches from one tile to the next along ``axis`` (the middle of
    each overlap): the first pixel every tile but the first keeps, read off the window itself."""
    grid = window.grid
    starts = (
        i * grid.stride[axis] + int(np.flatnonzero(window.axis_profile(axis, i))[0])
        for i in range(1, grid.counts[axis])
    )
    return np.array([x for x in starts if x < grid.shape[axis]], dtype=int)


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


TABLE_HEAD = table_head(
    "model", "tile", "overlap (asked → used)", "kept margin (px)", "blend", "mean abs Δp", "p99 abs Δp",
    "max abs Δp", "labels ≠ (%)", "seam contrast", "seconds",
)  # fmt: skip


@dataclass
class Subject:
    """One model benched: the model (channels-last), the normalised square and its untiled probabilities."""

    path: Path
    model: SegmentationModel
    x: np.ndarray
    ref: np.ndarray

    @property
    def name(self) -> str:
        return f"`{self.path.stem}`"

    def describe(self) -> str:
        kind = "fully convolutional" if self.model.spec.fully_convolutional else "global pooling"
        return f"{self.name}: `{_shown(self.path)}`, {self.model.arch}, {kind}, reach {self.model.reach} px"


@dataclass
class Group:
    """One tile size and overlap: the grid the engine uses and where ``crop`` switches tiles on it."""

    tile: int
    overlap: float
    grid: TileGrid
    edges: np.ndarray

    @classmethod
    def create(cls, side: int, tile: int, overlap: float, downsampling: int) -> Group:
        grid = TileGrid.create((side, side), tile, overlap, align=downsampling)
        return cls(tile, overlap, grid, kept_edges(BlendWindow(grid, "crop")))

    def head(self, name: str) -> str:
        """The row's first cells: model, tile, overlap asked → used, kept margin."""
        grid = self.grid
        margin = int(self.edges[0]) - grid.stride[0] if len(self.edges) else 0
        used = f"{self.overlap} → {(grid.tile[0] - grid.stride[0]) / grid.tile[0]:.3g}"
        return f"| {name} | {grid.tile[0]} | {used} | {margin} |"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        default=str(ROOT / "demo" / "unet_sample.safetensors"),
        help="checkpoints (comma list), each with the image's bands",
    )
    p.add_argument("--image", type=Path, default=ROOT / "demo" / "sample.tif")
    p.add_argument("--side", type=int, default=1536, help="side of the image's top-left square used (px)")
    p.add_argument("--tiles", default="256,128", help="tile sizes (comma list)")
    p.add_argument("--overlaps", default="0.25,0.125", help="overlaps (comma list)")
    p.add_argument("--frame", type=int, default=64, help="px at the image's edge left out")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    return p


def read_square(image: Path, side: int) -> np.ndarray:
    """The image's top-left square of ``side`` px (less where the image is smaller)."""
    import rasterio

    with rasterio.open(image) as src:
        side = min(side, src.height, src.width)
        return src.read(window=rasterio.windows.Window(0, 0, side, side))


def load_subject(path: Path, raw: np.ndarray) -> Subject:
    """The model, channels-last as the engine runs it, and one untiled pass of it over ``raw``."""
    import torch

    from models.checkpoint import load_checkpoint
    from pipeline.inputs.normalization import normalize

    model, card = load_checkpoint(path)
    model = model.eval().to(memory_format=torch.channels_last)
    x = normalize(raw, card.normalization)
    with torch.inference_mode():
        t = torch.from_numpy(x)[None].contiguous(memory_format=torch.channels_last)
        ref = torch.softmax(model(t).float(), dim=1)[0].numpy()
    return Subject(path, model, x, ref)


def mode_row(subject: Subject, group: Group, mode: str, frame: int) -> str:
    """The engine in memory with one blending mode, against the untiled pass."""
    from pipeline.engine.in_memory import segment_array

    t0 = time.perf_counter()
    res = segment_array(subject.x, subject.model, group.tile, group.overlap, mode, batch_size=4,
                        with_probabilities=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    e = compare(res.probabilities, res.labels, subject.ref, frame)
    e["contrast"] = seam_contrast(res.probabilities, group.edges, frame)
    print(f"{subject.path.stem} {group.tile} {group.overlap} {mode}: {seconds:.1f} s {e}", flush=True)
    return (
        f"{group.head(subject.name)} `{mode}` | {e['mean']:.2e} "
        f"| {e['p99']:.2e} | {e['max']:.2e} | {e['labels']:.4f} | {e['contrast']:.2f} "
        f"| {seconds:.1f} |"
    )


def subject_rows(subject: Subject, args: argparse.Namespace) -> list[str]:
    """Per tile size and overlap: the untiled pass's own seam contrast, then a row per blending mode."""
    side = subject.x.shape[-1]
    rows = []
    for tile in (int(v) for v in args.tiles.split(",")):
        for overlap in (float(v) for v in args.overlaps.split(",")):
            group = Group.create(side, tile, overlap, subject.model.downsampling)
            untiled = seam_contrast(subject.ref, group.edges, args.frame)
            rows.append(f"{group.head(subject.name)} (untiled pass) | – | – | – | – | {untiled:.2f} | – |")
            rows += [mode_row(subject, group, mode, args.frame) for mode in MODES]
    return rows


def record(
    args: argparse.Namespace, argv: list[str] | None, described: list[str], side: int, table: str
) -> None:
    """The "Blending modes" section of ``bench/RESULTS.md``."""
    import torch

    from bench.results import write_section

    cmd = command_line("bench.blend_bench", argv if argv is not None else sys.argv[1:])
    write_section(
        "Blending modes",
        f"Command: `{cmd}`  \nDate: {dt.datetime.now():%Y-%m-%d %H:%M}  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}  \n"
        f"Models: {'; '.join(described)}. Image: the top-left {side}² of `{_shown(args.image)}`. "
        f"Each row: the engine in memory (blocks of 4096, batch 4) against one untiled pass of the "
        f"same model over the whole square, both channels-last; a {args.frame}-px frame at the "
        f"image's edge left out. Kept margin: what `crop` drops of each tile side (half the "
        f"overlap; the grid rounds the stride down to the model's downsampling, so the overlap used "
        f"can exceed the one asked). Seam contrast: the mean probability step across the lines where "
        f"`crop` switches tiles (the middle of each overlap), ÷ the mean step across every line; the "
        f"untiled pass's own value is the row above each group.\n\n{table}\n",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models = [Path(m) for m in args.models.split(",") if m]
    for path in (*models, args.image):
        if not path.exists():
            print(f"blend_bench: {path}: not found (run `make demo` first, or pass --models / --image)")
            return 2
    raw = read_square(args.image, args.side)
    lines = list(TABLE_HEAD)
    described = []
    for path in models:
        subject = load_subject(path, raw)
        described.append(subject.describe())
        lines += subject_rows(subject, args)
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record(args, argv, described, raw.shape[-1], table)
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
