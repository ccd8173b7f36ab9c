"""What ``segment``, ``watch``, ``train`` and ``promote`` do with their parsed arguments.

Each command is given the flow it runs rather than importing it: the ``gigaseg``
command line passes the flow modules' functions, a flow script (``python
flows/segment_scene.py``) passes its own, so the script's module is never loaded a
second time under its package name.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from flows.arguments import (
    engine_options_given,
    is_batch,
    segment_config_from_args,
    segment_configs_from_args,
    train_settings_from_args,
)
from flows.script import say
from pipeline.errors import InputError
from pipeline.stores.location import check_writable_folder, location
from pipeline.tracking.recorder import discard_helper
from pipeline.watch.settings import check_watch_arguments, segment_options


def segment(args: argparse.Namespace, segment_flow: ModuleType) -> int:
    """``gigaseg segment``: run the flow, then print its one-line summary (one a scene for a batch).

    ``segment_flow``: the module of the segment flows (``flows.segment_scene``, or the script itself).
    A batch exits with status 1 when any of its scenes failed, each failure said in one line.
    """
    if is_batch(args) or args.no_track:
        discard_helper()  # the MLflow helper the command line may have started tracks one scene only
    if is_batch(args):
        return _segment_batch(args, segment_flow)
    summary = segment_flow.segment_scene(
        segment_config_from_args(args), labels=args.labels, regions=args.regions, track=not args.no_track
    )
    say(args.quiet, f"gigaseg: {summary.line()}")
    return 0


def output_folder(url: str) -> None:
    """``--output-dir``: made (with its parents) when it is a local folder that is not there yet."""
    where = location(url)
    if isinstance(where, Path) and not where.is_dir():
        try:
            where.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"{url}: cannot make the output folder ({exc.strerror or exc})") from None
    check_writable_folder(where)


def _segment_batch(args: argparse.Namespace, segment_flow: ModuleType) -> int:
    """Every input of a batch into ``--output-dir`` through one pool; failures named, one line each."""
    output_folder(args.output_dir)
    report = segment_flow.segment_scenes(segment_configs_from_args(args), track=not args.no_track)
    for summary in report.done:
        say(args.quiet, f"gigaseg: {summary.line()}")
    for scene, reason in report.failed:
        print(f"gigaseg: {reason if scene in reason else f'{scene}: {reason}'}", file=sys.stderr)
    say(args.quiet, f"gigaseg: {report.line()}")
    return 1 if report.failed else 0


def _watch_parameters(args: argparse.Namespace, options: dict[str, object]) -> dict[str, Any]:
    """The watch flow's parameters (absolute paths, so a served flow finds them from anywhere)."""
    return {
        "input_url": args.input,
        "output_dir": str(location(args.output_dir).resolve()),
        "model": args.model
        if "://" in args.model or args.model.startswith(("arch:", "models:/"))
        else str(Path(args.model).resolve()),
        "pattern": args.pattern,
        "max_concurrent": args.max_concurrent,
        "min_age_seconds": args.min_age,
        "options": options,
    }


def watch(args: argparse.Namespace, watch_flow: ModuleType) -> int:
    """``gigaseg watch``: segment new imagery once (``--once``) or serve the scan on a schedule.

    ``watch_flow``: the module of the watch flow (``flows.watch_imagery``, or the script itself).
    """
    options = engine_options_given(args)
    output_folder(args.output_dir)
    check_watch_arguments(args.input, args.output_dir, args.model, segment_options(options))
    parameters = _watch_parameters(args, options)
    process_new_imagery = watch_flow.process_new_imagery
    if args.once:
        report = process_new_imagery(**parameters)
        for scene, reason in report.failed:
            print(f"gigaseg: {reason if scene in reason else f'{scene}: {reason}'}", file=sys.stderr)
        say(args.quiet, f"gigaseg watch: {report.line()}")
        return 1 if report.failed else 0
    schedule = {"cron": args.cron} if args.cron else {"interval": args.every}
    say(args.quiet, f"gigaseg watch: serving watch-imagery/{args.name} ({schedule}); Ctrl-C stops")
    process_new_imagery.serve(name=args.name, parameters=parameters, print_starting_message=False, **schedule)
    return 0


def _check_train_outputs(args: argparse.Namespace) -> None:
    if args.model_name is None and args.output is None:
        raise InputError("give --model-name NAME (register in MLflow) and/or -o CHECKPOINT")
    if args.output is not None:
        if args.output.exists() and not args.overwrite:
            raise InputError(f"{args.output}: already exists (use --overwrite to replace it)")
        if not args.output.parent.is_dir():
            raise InputError(f"{args.output}: folder {args.output.parent} does not exist")


def _arch_config(args: argparse.Namespace) -> dict[str, Any]:
    """``--arch-config`` JSON with the ``--width`` / ``--depth`` shortcuts applied."""
    try:
        config = json.loads(args.arch_config) if args.arch_config else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"--arch-config: not JSON ({exc})") from None
    for key in ("width", "depth"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def train(args: argparse.Namespace, train_model: Callable[..., Any]) -> int:
    """``gigaseg train``: fit, register and/or write the checkpoint, print the best epoch's scores."""
    _check_train_outputs(args)
    settings = train_settings_from_args(args, _arch_config(args))
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
        log=None if args.quiet else (lambda m: say(False, f"train: {m}")),
    )
    best = report.outcome.best
    where = f"registered {report.version.uri}" if report.version else f"wrote {args.output}"
    say(
        args.quiet,
        f"gigaseg: {where} (MLflow run {report.run_id}); best epoch {report.outcome.best_epoch}: "
        f"held-out accuracy {best.accuracy:.3f}, mIoU {best.miou:.3f}, mDice {best.mdice:.3f}",
    )
    return 0


def promote(args: argparse.Namespace, promote_model: Callable[..., Any]) -> int:
    """``gigaseg promote``: evaluate and maybe move the champion alias, or roll it back."""
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
