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
import warnings
from collections.abc import Sequence
from pathlib import Path

from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import InputError
from pipeline.execution.process_memory import bound_process_memory

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
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="checkpoint file, models:/NAME@ALIAS or models:/NAME/VERSION (registry), or arch:NAME",
    )
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="labels: .tif (COG), .nii/.nii.gz (NIfTI) or .zarr"
    )
    add_engine_arguments(p)
    p.add_argument("--probabilities", type=Path, help="also write per-class probabilities here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--work-dir", type=Path, help="where stores live while running (resume point)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder after success")
    p.add_argument("--labels", type=Path, help="reference label raster: per-region IoU / Dice / accuracy")
    p.add_argument("--regions", type=Path, help="GeoJSON polygons: metrics per polygon instead of per block")
    p.add_argument("--no-track", action="store_true", help="no MLflow run (and no per-region metrics)")


ENGINE_OPTIONS = (
    "tile", "overlap", "blend", "sigma", "block", "chunk", "batch_size", "device", "amp", "channels_last",
    "num_classes",
    "in_channels", "seed", "threads", "crf", "crf_iterations", "crf_radius", "crf_smooth_weight",
    "crf_smooth_sigma", "crf_appearance_weight", "crf_appearance_sigma_pos", "crf_appearance_sigma_feat",
    "crf_bands", "workers", "ray_address", "spacing", "slice_axis", "tta", "volume_block", "volume_chunk",
)  # fmt: skip


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """How to segment (tiling, blending, device, CRF), shared by ``segment`` and ``watch``."""
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction in [0, 1)")
    p.add_argument("--blend", default="gaussian", help="constant, gaussian or crop")
    p.add_argument("--sigma", type=float, default=0.125, help="gaussian sigma, fraction of the tile")
    p.add_argument("--block", type=int, default=4096, help="output block size (whole chunks)")
    p.add_argument("--chunk", type=int, default=512, help="store chunk size in pixels")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision on GPU (bf16/fp16)")
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="run the model in its own memory layout (default: channels-last, faster convolutions)",
    )
    p.add_argument("--num-classes", type=int, help="classes, for arch:NAME models")
    p.add_argument("--in-channels", type=int, help="input channels, for arch:NAME models")
    p.add_argument("--seed", type=int, default=0, help="weight seed, for arch:NAME models")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--crf", default="none", help="refinement: none, local (exact blockwise) or dense")
    p.add_argument("--crf-iterations", type=int, help="mean-field iterations (default: 5 local, 10 dense)")
    p.add_argument("--crf-radius", type=float, default=4.0, help="local CRF window radius (pixels)")
    p.add_argument("--crf-smooth-weight", type=float, default=5.0, help="w2, smoothness kernel weight")
    p.add_argument("--crf-smooth-sigma", type=float, default=3.0, help="σγ, smoothness width (pixels)")
    p.add_argument("--crf-appearance-weight", type=float, default=10.0, help="w1, appearance kernel weight")
    p.add_argument(
        "--crf-appearance-sigma-pos", type=float, default=80.0, help="σα, appearance position width"
    )
    p.add_argument(
        "--crf-appearance-sigma-feat", type=float, default=20.0, help="σβ, appearance colour width (0–255)"
    )
    p.add_argument(
        "--crf-bands", type=lambda t: tuple(int(b) for b in t.split(",")), help="appearance bands, e.g. 3,2,1"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="Ray actors (default: one per GPU, else one single-threaded CPU actor per core; "
        "env GIGASEG_WORKERS); 0 runs in this process without Ray",
    )
    p.add_argument(
        "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, a running one, else a local one)"
    )
    p.add_argument("--spacing", help="voxel size Z,Y,X in mm (or one number) for a TIFF stack")
    p.add_argument("--slice-axis", type=int, help="2D model over a volume: axis 0 (z), 1 (y) or 2 (x)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (2^D passes per tile)")
    p.add_argument("--volume-block", type=int, default=128, help="output block side for volumes (voxels)")
    p.add_argument("--volume-chunk", type=int, default=64, help="store chunk side for volumes (voxels)")


def segment_config_from_args(args: argparse.Namespace):  # -> SegmentConfig
    """Build the shared job configuration from parsed arguments."""
    from pipeline.job.config import SegmentConfig

    return SegmentConfig(
        input=args.input,
        model=args.model,
        output=args.output,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        quiet=args.quiet,
        work_dir=args.work_dir,
        keep_work=args.keep_work,
        **{name: getattr(args, name) for name in ENGINE_OPTIONS},
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from flows.segment_scene import segment_scene

    summary = segment_scene(
        segment_config_from_args(args), labels=args.labels, regions=args.regions, track=not args.no_track
    )
    _say(args.quiet, f"gigaseg: {summary.line()}")
    return 0


def _engine_options_given(args: argparse.Namespace) -> dict[str, object]:
    """Engine options that differ from their defaults: all a watch passes on (defaults stay in one place)."""
    reference = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(reference)
    return {n: getattr(args, n) for n in ENGINE_OPTIONS if getattr(args, n) != reference.get_default(n)}


def cmd_watch(args: argparse.Namespace) -> int:
    """Segment new imagery once (``--once``) or serve the scan on a schedule."""
    options = _engine_options_given(args)
    from flows.watch_imagery import process_new_imagery
    from pipeline.watch.settings import check_watch_arguments, segment_options

    check_watch_arguments(args.input, args.output_dir, args.model, segment_options(options))
    parameters = {
        "input_url": args.input,
        "output_dir": str(args.output_dir.resolve()),
        "model": args.model
        if "://" in args.model or args.model.startswith(("arch:", "models:/"))
        else str(Path(args.model).resolve()),
        "pattern": args.pattern,
        "max_concurrent": args.max_concurrent,
        "min_age_seconds": args.min_age,
        "options": options,
    }
    if args.once:
        report = process_new_imagery(**parameters)
        for scene, reason in report.failed:
            print(f"gigaseg: {reason if scene in reason else f'{scene}: {reason}'}", file=sys.stderr)
        _say(args.quiet, f"gigaseg watch: {report.line()}")
        return 1 if report.failed else 0
    schedule = {"cron": args.cron} if args.cron else {"interval": args.every}
    _say(args.quiet, f"gigaseg watch: serving watch-imagery/{args.name} ({schedule}); Ctrl-C stops")
    process_new_imagery.serve(name=args.name, parameters=parameters, print_starting_message=False, **schedule)
    return 0


def cmd_sample_scene(args: argparse.Namespace) -> int:
    from pipeline.demos.sample_scene import write_sample_scene

    if args.size < 64:
        raise InputError(f"--size must be at least 64 pixels, got {args.size}")
    scene = write_sample_scene(args.out_dir, args.size, args.seed)
    _say(args.quiet, f"gigaseg: wrote {scene.image} and {scene.labels}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from flows.train_model import train_model
    from pipeline.training.trainer import TrainSettings

    if args.model_name is None and args.output is None:
        raise InputError("give --model-name NAME (register in MLflow) and/or -o CHECKPOINT")
    if args.output is not None:
        if args.output.exists() and not args.overwrite:
            raise InputError(f"{args.output}: already exists (use --overwrite to replace it)")
        if not args.output.parent.is_dir():
            raise InputError(f"{args.output}: folder {args.output.parent} does not exist")
    try:
        config = json.loads(args.arch_config) if args.arch_config else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"--arch-config: not JSON ({exc})") from None
    for key in ("width", "depth"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    settings = TrainSettings(
        arch=args.arch,
        arch_config=config,
        tile=args.tile,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        lr=args.lr,
        loss=args.loss,
        aux_weight=args.aux_weight,
        balanced=args.balanced,
        jitter=args.jitter,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        backbone_weights=None if args.backbone_weights is None else str(args.backbone_weights),
        normalization=args.normalization,
    )
    report = train_model(
        [str(i) for i in args.images],
        [str(lab) for lab in args.labels],
        args.model_name or args.output.stem,
        settings,
        val_fraction=args.val_fraction,
        val_image=args.val_image,
        val_labels=args.val_labels,
        class_names=args.classes.split(",") if args.classes else None,
        work_dir=args.work_dir,
        output=args.output,
        register=args.model_name is not None,
        spacing=args.spacing,
        log=None if args.quiet else (lambda m: _say(False, f"train: {m}")),
    )
    best = report.outcome.best
    where = f"registered {report.version.uri}" if report.version else f"wrote {args.output}"
    _say(
        args.quiet,
        f"gigaseg: {where} (MLflow run {report.run_id}); best epoch {report.outcome.best_epoch}: "
        f"held-out accuracy {best.accuracy:.3f}, mIoU {best.miou:.3f}, mDice {best.mdice:.3f}",
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from flows.promote_model import promote_model

    decision = promote_model(
        args.name,
        args.version,
        args.eval_image,
        args.eval_labels,
        metric=args.metric,
        margin=args.margin,
        force=args.force,
        rollback_champion=args.rollback,
        block=args.block,
    )
    print(f"gigaseg: {decision.line()} (MLflow run {decision.run_id})", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a scene, train and register a small U-Net on part of it, segment it all, score it."""
    from flows.segment_scene import segment_scene
    from flows.train_model import train_model
    from pipeline.demos.sample_scene import CLASS_COLORS, CLASS_NAMES, write_sample_scene
    from pipeline.evaluation.metrics import evaluate_labels
    from pipeline.evaluation.preview import write_preview
    from pipeline.job.config import SegmentConfig
    from pipeline.training.trainer import TrainSettings

    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say = (lambda m: None) if args.quiet else (lambda m: _say(False, m))
    say(f"demo 1/4: sample scene {args.size}×{args.size} px → {work}")
    scene = write_sample_scene(work, args.size, args.seed)
    say(f"demo 2/4: training a small U-Net, {args.epochs} epochs (right 20% of columns held out)")
    settings = TrainSettings(
        arch="unet",
        arch_config={"width": 16, "depth": 3, "batch_norm": True},
        tile=128,
        batch_size=8,
        epochs=args.epochs,
        steps_per_epoch=50,
        seed=args.seed,
    )
    report = train_model(
        [str(scene.image)],
        [str(scene.labels)],
        "gigaseg-demo-landcover",
        settings,
        val_fraction=0.2,
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        work_dir=work / "train",
        output=work / "unet_sample.safetensors",
        log=None if args.quiet else (lambda m: say(f"  train: {m}")),
    )
    best = report.outcome.best
    model = report.version.uri if report.version else str(work / "unet_sample.safetensors")
    say(f"  held-out accuracy {best.accuracy:.3f}, mIoU {best.miou:.3f}; registered {model}")
    output = work / "sample_classes.tif"
    say(f"demo 3/4: segmenting the whole scene → {output}")
    summary = segment_scene(
        SegmentConfig(
            input=scene.image,
            model=model,
            output=output,
            block=1024,
            probabilities=work / "sample_probabilities.tif",
            overwrite=True,
            quiet=args.quiet,
        ),
        labels=scene.labels,
    )
    say(f"  {summary.line()}; per-region metrics in MLflow and beside the output")
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
    from pipeline.demos.volume_demo import run_demo

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
    """Print the registry: parameters next to the paper's figure, downsampling, reach, default tile."""
    from models import specs
    from models.table import row

    picked = [s for s in specs() if not args.names or s.name in args.names]
    unknown = sorted(set(args.names) - {s.name for s in picked})
    if unknown:
        raise InputError(f"unknown architecture(s): {', '.join(unknown)} (see gigaseg models)")
    header = ["name", "family", "dims", "params", "paper figure", "diff", "down", "reach", "tile"]
    rows = [header] + [[c.strip("`") for c in row(s)[: len(header)]] for s in picked]
    width = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip())
    return 0


def _log_warnings_as_one_line() -> None:
    """Our warnings as ``gigaseg: …`` lines; other libraries' loggers keep their own settings."""
    logger = logging.getLogger("gigaseg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("gigaseg: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="gigaseg", description="Tiled segmentation of gigapixel rasters and volumes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment a scene into a label COG")
    add_segment_arguments(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("watch", help="segment new or changed scenes of a folder, once or on a schedule")
    p.add_argument("input", help="folder (or fsspec URL such as s3://bucket/prefix) to scan")
    p.add_argument("--output-dir", required=True, type=Path, help="where label COGs and the ledger go")
    p.add_argument("-m", "--model", required=True, help="checkpoint file, or arch:NAME (untrained)")
    p.add_argument("--pattern", default="*.tif", help="glob of scenes, relative to INPUT (e.g. '**/*.tif')")
    p.add_argument("--once", action="store_true", help="process what is new, then exit")
    p.add_argument("--every", type=float, default=600.0, help="seconds between scans when serving")
    p.add_argument("--cron", help="cron schedule when serving (instead of --every)")
    p.add_argument("--name", default="scheduled", help="deployment name when serving")
    p.add_argument("--max-concurrent", type=int, default=1, help="scenes segmented at the same time")
    p.add_argument("--min-age", type=float, default=0.0, help="skip files modified less than this many s ago")
    p.add_argument("--quiet", action="store_true")
    add_engine_arguments(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("sample-scene", help="write a synthetic labelled land-cover scene")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample_scene)

    p = sub.add_parser(
        "train", help="fit a registered network on labelled rasters or volumes; register it in MLflow"
    )
    p.add_argument(
        "images",
        nargs="+",
        help="image rasters (a band stack as a.tif,b.tif,…) or volumes (NIfTI, DICOM folder, OME-Zarr, "
        "TIFF stack with --spacing) for a 3D network",
    )
    p.add_argument("--labels", required=True, nargs="+", type=Path, help="one label image per image")
    p.add_argument("--model-name", help="register the result as a new version of this MLflow model")
    p.add_argument("-o", "--output", type=Path, help="also write the checkpoint here")
    p.add_argument("--arch", default="unet", help="registered architecture (gigaseg models)")
    p.add_argument("--arch-config", help="architecture options as JSON, e.g. '{\"width\": 16}'")
    p.add_argument("--width", type=int, help="shortcut for the width option")
    p.add_argument("--depth", type=int, help="shortcut for the depth option")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--backbone-weights",
        type=Path,
        help="pretrained encoder weights (.safetensors or .pth state dict, e.g. ImageNet) to start from",
    )
    p.add_argument("--loss", default="ce", help="ce, dice or ce+dice")
    p.add_argument(
        "--aux-weight",
        type=float,
        default=None,
        help="one weight for every auxiliary head's loss (default: each head's weight from its paper)",
    )
    p.add_argument("--balanced", action="store_true", help="class-balanced tile sampling")
    p.add_argument("--jitter", type=float, default=0.1, help="intensity jitter (gain, offset)")
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without improvement")
    p.add_argument(
        "--normalization",
        default="dataset",
        help="dataset (training mean/std, default), zscore or percentile (per scene: MR, EM), "
        "or window:LOW,HIGH (fixed, e.g. a CT window in HU)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="last part of the last axis held out (a raster's right-most columns, a volume's last x-planes)",
    )
    p.add_argument("--spacing", help="voxel size Z,Y,X in mm (or one number) for TIFF stacks")
    p.add_argument("--val-image", help="separate validation image (instead of --val-fraction)")
    p.add_argument("--val-labels", help="labels of --val-image")
    p.add_argument("--classes", help="class names, comma-separated (default: the label raster's tags)")
    p.add_argument("--work-dir", type=Path, help="stores and resumable state (default .gigaseg/train/NAME)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("promote", help="move the champion alias to a better version, or roll back")
    p.add_argument("name", help="registered model name")
    p.add_argument("--version", type=int, help="candidate version")
    p.add_argument("--eval-image", type=Path, help="evaluation scene")
    p.add_argument("--eval-labels", type=Path, help="its reference labels")
    p.add_argument("--metric", default="miou", help="miou, mdice or accuracy")
    p.add_argument("--margin", type=float, default=0.0, help="candidate must beat the champion by this")
    p.add_argument("--force", action="store_true", help="promote regardless of the scores")
    p.add_argument("--rollback", action="store_true", help="give champion back to the previous version")
    p.add_argument("--block", type=int, default=2048, help="output block size for the evaluation runs")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("demo", help="the main job end to end on a generated scene")
    p.add_argument("--workdir", type=Path, default=Path("demo"))
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--epochs", type=int, default=6, help="training epochs of 50 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-volume", help="3D U-Net on MNI152 GM/WM, one hemisphere held out; Dice")
    p.add_argument("--workdir", type=Path, default=Path("demo_volume"))
    p.add_argument("--steps", type=int, default=400, help="optimiser steps, in epochs of at most 50")
    p.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="template voxel size (mm)")
    p.add_argument(
        "--extra-data", type=Path, help="folder with medical/hippocampus and medical/totalsegmentator"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo_volume)

    p = sub.add_parser("models", help="list registered architectures")
    p.add_argument("names", nargs="*", help="only these architectures")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gigaseg`` console script."""
    _log_warnings_as_one_line()
    # Said once, in one line, by check_inputs; rasterio would repeat it at every open.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    bound_process_memory()
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
