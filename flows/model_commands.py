"""``gigaseg model-card``, ``export-onnx`` and ``register``: models made elsewhere, in and out.

Thin: each parses its options and calls one library function
(:func:`models.formats.authoring.write_card`, :func:`models.formats.onnx_export.export_onnx`,
:func:`pipeline.tracking.model_versions.register_file`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flows.script import say
from pipeline.errors import InputError


def _colors(text: str | None) -> list[tuple[int, int, int]]:
    if not text:
        return []
    try:
        colors = [tuple(int(c) for c in item.split(",")) for item in text.split(";")]
    except ValueError:
        colors = []
    if not colors or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise InputError(f"--colors {text!r}: give R,G,B per class, separated by ';' (e.g. 0,0,255;0,128,0)")
    return colors  # type: ignore[return-value]


def _json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{name} {text!r}: not JSON ({exc})") from None


def cmd_model_card(args: argparse.Namespace) -> int:
    """Write (or embed) the card of an ONNX / TorchScript / .pt2 model, checked against it."""
    from models.checkpoint import CheckpointError
    from models.formats.authoring import write_card

    if not args.model.is_file():
        raise InputError(f"{args.model}: no such model file")
    fields: dict[str, Any] = {
        "class_colors": _colors(args.colors),
        "bands": [int(b) for b in args.bands.split(",")] if args.bands else None,
        "normalization": _json_option("--normalization", args.normalization) or {"kind": "none"},
        "tile_size": args.tile,
        "gsd": args.gsd,
        "downsampling": args.downsampling,
        "reach": args.reach,
    }
    try:
        card, where = write_card(args.model, args.classes.split(","), embed=args.embed, **fields)
    except (CheckpointError, ValueError) as exc:
        raise InputError(str(exc)) from None
    say(
        args.quiet,
        f"gigaseg: wrote the card of {args.model} to {where}: {card.num_classes} classes, "
        f"{card.in_channels} bands, downsampling {card.downsampling}, reach {card.reach}",
    )
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """A native checkpoint as ONNX, its card embedded."""
    from models.checkpoint import CheckpointError, load_checkpoint
    from models.formats.onnx_export import export_onnx

    if args.output.exists() and not args.overwrite:
        raise InputError(f"{args.output}: already exists (use --overwrite to replace it)")
    try:
        model, card = load_checkpoint(args.checkpoint)
        export_onnx(model, card, args.output)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    say(args.quiet, f"gigaseg: wrote {args.output} ({card.arch}, {card.num_classes} classes, card embedded)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """A model file (any format gigaseg runs) as a new version of a registered model."""
    from pipeline.tracking.model_versions import register_file

    version = register_file(args.model, args.model_name)
    say(args.quiet, f"gigaseg: registered {args.model} as {version.uri} (promote it with gigaseg promote)")
    return 0


def add_model_card_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-card", help="write the card of an ONNX / TorchScript / .pt2 model")
    p.add_argument("model", type=Path)
    p.add_argument("--classes", required=True, help="class names, comma-separated, in output-channel order")
    p.add_argument("--bands", help="1-based input bands, comma-separated (default: all, in order)")
    p.add_argument("--gsd", type=float, help="ground sample distance the model was trained at (m/px)")
    p.add_argument("--colors", help="R,G,B per class, ';'-separated (default: conventional colours)")
    p.add_argument("--normalization", help='JSON, e.g. {"kind": "scale", "scale": 0.0001, "offset": 0}')
    p.add_argument("--tile", type=int, help="tile size the model runs best at")
    p.add_argument("--downsampling", type=int, help="total downsampling factor (default: measured)")
    p.add_argument("--reach", type=int, help="receptive-field reach in pixels (default: measured)")
    p.add_argument("--embed", action="store_true", help="write into the ONNX file instead of a sidecar")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_model_card)


def add_export_onnx_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="a gigaseg checkpoint as ONNX, with its card embedded")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export_onnx)


def add_register_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register", help="register a model file (checkpoint, ONNX, TorchScript, .pt2) in MLflow"
    )
    p.add_argument("model", type=Path)
    p.add_argument("--model-name", required=True, help="registered model name")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_register)


SUBCOMMANDS = (add_model_card_command, add_export_onnx_command, add_register_command)
