"""The ``gigaseg`` command line: parses arguments, then runs a flow.

User mistakes (bad files, bad options) print one line, ``gigaseg: <what is
wrong>``, and exit with status 2; nothing half-written is left under an output's
final name. The options and what each flow command does live in
:mod:`flows.arguments` and :mod:`flows.commands`, which the flow scripts share.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flows import commands
from flows.arguments import (
    add_promote_arguments,
    add_segment_arguments,
    add_train_arguments,
    add_watch_arguments,
)
from flows.prefect_server import use_prefect_api
from flows.script import prepare_process, run_command, say
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.demos.sample_scene import SampleScene


def cmd_segment(args: argparse.Namespace) -> int:
    from flows import segment_scene

    return commands.segment(args, segment_scene)


def cmd_watch(args: argparse.Namespace) -> int:
    use_prefect_api()
    from flows import watch_imagery

    return commands.watch(args, watch_imagery)


def cmd_train(args: argparse.Namespace) -> int:
    use_prefect_api()
    from flows.train_model import train_model

    return commands.train(args, train_model)


def cmd_promote(args: argparse.Namespace) -> int:
    use_prefect_api()
    from flows.promote_model import promote_model

    return commands.promote(args, promote_model)


def cmd_sample_scene(args: argparse.Namespace) -> int:
    from pipeline.demos.sample_scene import write_sample_scene

    if args.size < 64:
        raise InputError(f"--size must be at least 64 pixels, got {args.size}")
    scene = write_sample_scene(args.out_dir, args.size, args.seed)
    say(args.quiet, f"gigaseg: wrote {scene.image} and {scene.labels}")
    return 0


def _demo_model(args: argparse.Namespace, scene: SampleScene, log: Callable[[str], None]) -> str:
    """Train and register the demo's small U-Net on the scene (right 20% of columns held out)."""
    from flows.train_model import train_model
    from pipeline.demos.sample_scene import CLASS_COLORS, CLASS_NAMES
    from pipeline.training.settings import TrainSettings

    work: Path = args.workdir
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
        log=None if args.quiet else (lambda m: log(f"  train: {m}")),
    )
    best = report.outcome.best
    model = report.version.uri if report.version else str(work / "unet_sample.safetensors")
    log(f"  held-out accuracy {best.accuracy:.3f}, mIoU {best.miou:.3f}; registered {model}")
    return model


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a scene, train and register a small U-Net on part of it, segment it all, score it."""
    from flows.segment_scene import segment_scene
    from pipeline.demos.sample_scene import CLASS_COLORS, CLASS_NAMES, write_sample_scene
    from pipeline.evaluation.metrics import evaluate_labels
    from pipeline.evaluation.preview import write_preview
    from pipeline.job.config import SegmentConfig

    use_prefect_api()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = (lambda m: None) if args.quiet else (lambda m: say(False, m))
    log(f"demo 1/4: sample scene {args.size}×{args.size} px → {work}")
    scene = write_sample_scene(work, args.size, args.seed)
    log(f"demo 2/4: training a small U-Net, {args.epochs} epochs (right 20% of columns held out)")
    model = _demo_model(args, scene, log)
    output = work / "sample_classes.tif"
    log(f"demo 3/4: segmenting the whole scene → {output}")
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
    log(f"  {summary.line()}; per-region metrics in MLflow and beside the output")
    log("demo 4/4: accuracy against the generated labels")
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
    log = (lambda m: None) if args.quiet else (lambda m: say(False, f"demo-volume: {m}"))
    results = run_demo(
        args.workdir, args.extra_data, steps=args.steps, resolution=args.resolution, seed=args.seed, log=log
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


def cmd_server(args: argparse.Namespace) -> int:
    """``gigaseg server start|status|stop``: the shared local Prefect server (see flows.prefect_server)."""
    from flows import prefect_server

    folder = prefect_server.server_folder()
    if args.action == "stop":
        print(f"gigaseg: {prefect_server.stop(folder, force=args.force)}")
        return 0
    if args.action == "start":
        url = prefect_server.acquire(folder, prefect_server.idle_minutes())
        print(f"gigaseg: shared Prefect server at {url} (UI: {url.removesuffix('/api')}; state {folder})")
        return 0
    url = prefect_server.healthy_url(folder)
    print(f"gigaseg: shared Prefect server at {url}" if url else "gigaseg: no shared Prefect server running")
    return 0 if url else 1


def _add_segment_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a scene into a label COG")
    add_segment_arguments(p)
    p.set_defaults(func=cmd_segment)


def _add_watch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="segment new or changed scenes of a folder, once or on a schedule")
    add_watch_arguments(p)
    p.set_defaults(func=cmd_watch)


def _add_sample_scene_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample-scene", help="write a synthetic labelled land-cover scene")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample_scene)


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fit a registered network on labelled rasters or volumes; register it in MLflow"
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_promote_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="move the champion alias to a better version, or roll back")
    add_promote_arguments(p)
    p.set_defaults(func=cmd_promote)


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end on a generated scene")
    p.add_argument("--workdir", type=Path, default=Path("demo"))
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--epochs", type=int, default=6, help="training epochs of 50 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def _add_demo_volume_command(sub: argparse._SubParsersAction) -> None:
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


def _add_models_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered architectures")
    p.add_argument("names", nargs="*", help="only these architectures")
    p.set_defaults(func=cmd_models)


def _add_server_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server", help="the shared local Prefect server that flow commands use (start, status, stop)"
    )
    p.add_argument("action", choices=("start", "status", "stop"))
    p.add_argument("--force", action="store_true", help="stop it even while commands are using it")
    p.set_defaults(func=cmd_server)


SUBCOMMANDS = (
    _add_segment_command,
    _add_watch_command,
    _add_sample_scene_command,
    _add_train_command,
    _add_promote_command,
    _add_demo_command,
    _add_demo_volume_command,
    _add_models_command,
    _add_server_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: one subparser per command, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="gigaseg", description="Tiled segmentation of gigapixel rasters and volumes."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in SUBCOMMANDS:
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gigaseg`` console script."""
    prepare_process()
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
