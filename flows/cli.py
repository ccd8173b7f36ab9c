"""The ``gigaseg`` command line: parses arguments, then runs a flow.

User mistakes (bad files, bad options) print one line, ``gigaseg: <what is
wrong>``, and exit with status 2; nothing half-written is left under an output's
final name.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import InputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gigaseg segment`` (shared with ``flows/segment_scene.py``)."""
    p.add_argument(
        "input",
        type=Path,
        help="raster (GeoTIFF or anything GDAL reads) or volume (.nii/.nii.gz, DICOM folder, "
        "OME-Zarr, TIFF stack with --spacing)",
    )
    p.add_argument("-m", "--model", required=True, help="checkpoint file, or arch:NAME (untrained)")
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="labels: .tif (COG), .nii/.nii.gz (NIfTI) or .zarr"
    )
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction in [0, 1)")
    p.add_argument("--blend", default="gaussian", help="constant, gaussian or crop")
    p.add_argument("--sigma", type=float, default=0.125, help="gaussian sigma, fraction of the tile")
    p.add_argument("--block", type=int, default=2048, help="output block size (whole chunks)")
    p.add_argument("--chunk", type=int, default=512, help="store chunk size in pixels")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision on GPU (bf16/fp16)")
    p.add_argument("--probabilities", type=Path, help="also write per-class probabilities here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--work-dir", type=Path, help="where stores live while running (resume point)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder after success")
    p.add_argument("--num-classes", type=int, help="classes, for arch:NAME models")
    p.add_argument("--in-channels", type=int, help="input channels, for arch:NAME models")
    p.add_argument("--seed", type=int, default=0, help="weight seed, for arch:NAME models")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--crf", default="none", help="refinement: none, local (exact blockwise) or dense")
    p.add_argument("--crf-iterations", type=int, default=5, help="mean-field iterations")
    p.add_argument("--crf-radius", type=float, default=4.0, help="local CRF window radius (pixels)")
    p.add_argument("--spacing", help="voxel size Z,Y,X in mm (or one number) for a TIFF stack")
    p.add_argument("--slice-axis", type=int, help="2D model over a volume: axis 0 (z), 1 (y) or 2 (x)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (2^D passes per tile)")
    p.add_argument("--volume-block", type=int, default=128, help="output block side for volumes (voxels)")
    p.add_argument("--volume-chunk", type=int, default=64, help="store chunk side for volumes (voxels)")


def segment_config_from_args(args: argparse.Namespace):  # -> SegmentConfig
    """Build the shared job configuration from parsed arguments."""
    from pipeline.config import SegmentConfig

    return SegmentConfig(
        input=args.input,
        model=args.model,
        output=args.output,
        tile=args.tile,
        overlap=args.overlap,
        blend=args.blend,
        sigma=args.sigma,
        block=args.block,
        chunk=args.chunk,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        quiet=args.quiet,
        work_dir=args.work_dir,
        keep_work=args.keep_work,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        seed=args.seed,
        threads=args.threads,
        crf=args.crf,
        crf_iterations=args.crf_iterations,
        crf_radius=args.crf_radius,
        spacing=args.spacing,
        slice_axis=args.slice_axis,
        tta=args.tta,
        volume_block=args.volume_block,
        volume_chunk=args.volume_chunk,
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from flows.segment_scene import segment_scene

    summary = segment_scene(segment_config_from_args(args))
    _say(args.quiet, f"gigaseg: {summary.line()}")
    return 0


def cmd_sample_scene(args: argparse.Namespace) -> int:
    from pipeline.sample_scene import write_sample_scene

    if args.size < 64:
        raise InputError(f"--size must be at least 64 pixels, got {args.size}")
    scene = write_sample_scene(args.out_dir, args.size, args.seed)
    _say(args.quiet, f"gigaseg: wrote {scene.image} and {scene.labels}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.training import train_on_raster

    if args.output.exists() and not args.overwrite:
        raise InputError(f"{args.output}: already exists (use --overwrite to replace it)")
    if not args.output.parent.is_dir():
        raise InputError(f"{args.output}: folder {args.output.parent} does not exist")
    config = {"width": args.width, "depth": args.depth} if args.arch == "unet" else {}
    result = train_on_raster(
        args.image,
        args.labels,
        args.output,
        arch=args.arch,
        arch_config=config,
        tile=args.tile,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        log=None if args.quiet else (lambda m: _say(False, f"train: {m}")),
    )
    _say(
        args.quiet,
        f"gigaseg: wrote {result.checkpoint} after {result.steps} steps in {result.seconds:.0f} s; "
        f"held-out accuracy {result.val_accuracy:.3f}, mIoU {result.val_miou:.3f}",
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a scene, train a small U-Net on part of it, segment it all, score it."""
    from flows.segment_scene import segment_scene
    from pipeline.config import SegmentConfig
    from pipeline.metrics import evaluate_labels
    from pipeline.preview import write_preview
    from pipeline.sample_scene import CLASS_COLORS, CLASS_NAMES, write_sample_scene
    from pipeline.training import train_on_raster

    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say = (lambda m: None) if args.quiet else (lambda m: _say(False, m))
    say(f"demo 1/4: sample scene {args.size}×{args.size} px → {work}")
    scene = write_sample_scene(work, args.size, args.seed)
    model_path = work / "unet_sample.safetensors"
    say(f"demo 2/4: training a small U-Net for {args.steps} steps (right 20% of columns held out)")
    trained = train_on_raster(
        scene.image,
        scene.labels,
        model_path,
        arch="unet",
        arch_config={"width": 16, "depth": 3, "batch_norm": True},
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        steps=args.steps,
        seed=args.seed,
        log=None if args.quiet else (lambda m: say(f"  train: {m}")),
    )
    say(f"  held-out accuracy {trained.val_accuracy:.3f}, mIoU {trained.val_miou:.3f}")
    output = work / "sample_classes.tif"
    say(f"demo 3/4: segmenting the whole scene → {output}")
    summary = segment_scene(
        SegmentConfig(
            input=scene.image,
            model=str(model_path),
            output=output,
            block=1024,
            probabilities=work / "sample_probabilities.tif",
            overwrite=True,
            quiet=args.quiet,
        )
    )
    say(f"  {summary.line()}")
    say("demo 4/4: accuracy against the generated labels")
    scores = evaluate_labels(output, scene.labels, len(CLASS_NAMES))
    preview = write_preview(scene.image, output, work / "preview.png", CLASS_NAMES, CLASS_COLORS)
    per_class = ", ".join(f"{n} {v:.2f}" for n, v in zip(CLASS_NAMES, scores["iou"]))
    print(
        f"gigaseg demo: accuracy {scores['accuracy']:.3f}, mIoU {scores['miou']:.3f} "
        f"(IoU {per_class}) over {scores['pixels'] / 1e6:.1f} Mpx; "
        f"preview {preview}; total {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return 0


def cmd_demo_volume(args: argparse.Namespace) -> int:
    """Train a small 3D U-Net on MNI152 (one hemisphere held out), segment it, print Dice per class."""
    from pipeline.volume_demo import run_demo

    if args.steps <= 0:
        raise InputError(f"--steps must be positive, got {args.steps}")
    if args.extra_data is not None and not args.extra_data.is_dir():
        raise InputError(f"{args.extra_data}: no such folder")
    say = (lambda m: None) if args.quiet else (lambda m: _say(False, f"demo-volume: {m}"))
    results = run_demo(
        args.workdir, args.extra_data, steps=args.steps, resolution=args.resolution, seed=args.seed, log=say
    )
    for r in results:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in r.dice.items())
        print(
            f"gigaseg demo-volume: {r.name} {r.shape}: Dice ({r.holdout}) {dice}; wrote {r.output}",
            flush=True,
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import models

    rows = []
    for spec in models.specs():
        net = models.build(spec.name)
        params = sum(p.numel() for p in net.parameters())
        rows.append((spec.name, spec.family, f"{spec.spatial_dims}D", f"{params / 1e6:.2f}M", spec.paper))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], width)) + "  " + r[4])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="gigaseg", description="Tiled segmentation of gigapixel rasters and volumes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment a scene into a label COG")
    add_segment_arguments(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("sample-scene", help="write a synthetic labelled land-cover scene")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample_scene)

    p = sub.add_parser("train", help="fit a registered network on a labelled raster")
    p.add_argument("image", type=Path)
    p.add_argument("--labels", required=True, type=Path)
    p.add_argument("-o", "--output", required=True, type=Path, help="checkpoint to write")
    p.add_argument("--arch", default="unet")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the main job end to end on a generated scene")
    p.add_argument("--workdir", type=Path, default=Path("demo"))
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-volume", help="3D U-Net on MNI152 GM/WM, one hemisphere held out; Dice")
    p.add_argument("--workdir", type=Path, default=Path("demo_volume"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="template voxel size (mm)")
    p.add_argument(
        "--extra-data", type=Path, help="folder with medical/hippocampus and medical/totalsegmentator"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo_volume)

    p = sub.add_parser("models", help="list registered architectures")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gigaseg`` console script."""
    logging.basicConfig(level=logging.WARNING, format="gigaseg: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"gigaseg: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gigaseg: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
