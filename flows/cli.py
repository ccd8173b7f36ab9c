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
from collections.abc import Sequence
from pathlib import Path

from flows import model_commands
from flows.prefect_server import use_prefect_api
from flows.script import (
    loading_without_collecting,
    prepare_process,
    quiet_when_the_reader_goes,
    restart_on_chosen_allocator,
    run_command,
    say,
)
from pipeline.errors import InputError
from pipeline.tracking.recorder import discard_helper, start_helper


def cmd_segment(args: argparse.Namespace) -> int:
    with loading_without_collecting():
        from flows import commands, segment_scene

    return commands.segment(args, segment_scene)


def cmd_watch(args: argparse.Namespace) -> int:
    use_prefect_api()
    with loading_without_collecting():
        from flows import commands, watch_imagery

    return commands.watch(args, watch_imagery)


def cmd_train(args: argparse.Namespace) -> int:
    use_prefect_api()
    with loading_without_collecting():
        from flows import commands
        from flows.train_model import train_model

    return commands.train(args, train_model)


def cmd_promote(args: argparse.Namespace) -> int:
    use_prefect_api()
    with loading_without_collecting():
        from flows import commands
        from flows.promote_model import promote_model

    return commands.promote(args, promote_model)


def cmd_sample_scene(args: argparse.Namespace) -> int:
    from pipeline.demos.sample_scene import write_sample_scene

    if args.size < 64:
        raise InputError(f"--size must be at least 64 pixels, got {args.size}")
    scene = write_sample_scene(args.out_dir, args.size, args.seed)
    say(args.quiet, f"gigaseg: wrote {scene.image} and {scene.labels}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on generated scenes (:mod:`flows.demo`), each stage timed."""
    with loading_without_collecting():
        from flows.demo import FULL, QUICK, run_demo, with_overrides
        from pipeline.tracking.runs import tracking_uri

    use_prefect_api()
    settings = with_overrides(
        FULL if args.full else QUICK,
        workdir=args.workdir,
        size=args.size,
        epochs=args.epochs,
        seed=args.seed,
    )
    if settings.size < 256:
        raise InputError(f"--size must be at least 256 pixels, got {settings.size}")
    if settings.epochs < 1:
        raise InputError(f"--epochs must be positive, got {settings.epochs}")
    t0 = time.perf_counter()
    result = run_demo(settings, args.quiet, lambda m: say(False, m))
    per_class = ", ".join(f"{n} {v:.2f}" for n, v in result.iou.items())
    print(
        f"gigaseg demo: accuracy {result.accuracy:.3f}, mIoU {result.miou:.3f} (IoU {per_class}) "
        f"on an unseen {result.pixels / 1e6:.1f} Mpx scene; total {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    say(
        args.quiet,
        f"gigaseg demo: outputs in {settings.workdir}/ — open {result.output} in QGIS, look at "
        f"{result.preview}; runs and models: mlflow ui --backend-store-uri {tracking_uri()}",
    )
    return 0


def cmd_demo_volume(args: argparse.Namespace) -> int:
    """Train a small 3D U-Net on MNI152 (one hemisphere held out), segment it, print Dice per class."""
    with loading_without_collecting():
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
    from flows.arguments import add_segment_arguments

    add_segment_arguments(p)
    p.set_defaults(func=cmd_segment)


def _add_watch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="segment new or changed scenes of a folder, once or on a schedule")
    from flows.arguments import add_watch_arguments

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
    from flows.arguments import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_promote_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="move the champion alias to a better version, or roll back")
    from flows.arguments import add_promote_arguments

    add_promote_arguments(p)
    p.set_defaults(func=cmd_promote)


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    from flows.demo import FULL, QUICK

    p = sub.add_parser("demo", help="the main job end to end on generated scenes, each stage timed")
    p.add_argument("--workdir", type=Path, default=QUICK.workdir)
    p.add_argument(
        "--full",
        action="store_true",
        help=f"the longer run: a {FULL.size}² scene, U-Net width {FULL.width} depth {FULL.depth}, "
        f"{FULL.epochs} epochs of {FULL.steps_per_epoch} steps (default: {QUICK.size}², width "
        f"{QUICK.width} depth {QUICK.depth}, {QUICK.epochs} epochs of {QUICK.steps_per_epoch})",
    )
    p.add_argument("--size", type=int, help="training scene side in pixels (default: the preset's)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    p.add_argument("--seed", type=int, default=QUICK.seed)
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
    *model_commands.SUBCOMMANDS,
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


def start_early(argv: Sequence[str]) -> None:
    """What a command starts before its imports: MLflow's helper, for a tracked ``segment``.

    A guess from the raw arguments (the options are not parsed yet): the segment
    command takes the helper only when it tracks one scene, else it is stopped.
    """
    if argv[:1] == ["segment"] and not {"--no-track", "-h", "--help"} & set(argv):
        start_helper()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gigaseg`` console script (``argv``: called from Python, in this process)."""
    if argv is None:
        restart_on_chosen_allocator()
    argv = sys.argv[1:] if argv is None else list(argv)
    start_early(argv)
    try:
        with quiet_when_the_reader_goes():
            with loading_without_collecting():
                prepare_process()
                args = build_parser().parse_args(argv)
            return run_command(args.func, args)
    finally:
        discard_helper()


if __name__ == "__main__":
    sys.exit(main())
