"""Any model file gigaseg runs → the model (a :class:`SegmentationModel`) and its card.

A native checkpoint is built from its registered architecture. An external model
(ONNX, TorchScript, ``torch.export``) is opened by its format's module; its card
is the sidecar if there is one, else the one embedded in the file; the geometry the
card leaves out is measured (:mod:`models.formats.probe`, one log line says so);
then one forward pass checks the card against the network (input channels, output
channels, logits at the input's size). The network goes into the same wrapper as a
native one, so padding to the downsampling factor, the engine and the Ray actors
treat both alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, ModelCard, load_checkpoint
from models.formats import probe
from models.formats.detect import EXPORTED_PROGRAM, ONNX, SAFETENSORS, TORCHSCRIPT, model_format
from models.formats.exported_program import open_exported_program
from models.formats.onnx_model import open_onnx
from models.formats.opened import OpenedNetwork
from models.formats.sidecar import parse_card, sidecar_path
from models.formats.torchscript_model import open_torchscript
from models.registry import ArchSpec, get_spec, names
from models.wrapper import SegmentationModel

log = logging.getLogger("gigaseg")

OPENERS: dict[str, Callable[[Path], OpenedNetwork]] = {
    ONNX: open_onnx,
    TORCHSCRIPT: open_torchscript,
    EXPORTED_PROGRAM: open_exported_program,
}
DEFAULT_TILE = {2: 512, 3: 96}
"""Tile side for an external model whose card names none."""


def open_model_file(path: str | os.PathLike[str]) -> OpenedNetwork:
    """Open an external model file (not a native checkpoint) into its bare network."""
    path = Path(path)
    fmt = model_format(path)
    if fmt == SAFETENSORS:
        raise CheckpointError(f"{path}: a gigaseg checkpoint, not an external model (it already has a card)")
    return OPENERS[fmt](path)


def embedded_or_sidecar_card(path: Path, opened: OpenedNetwork) -> ModelCard | None:
    """The card of an external model: its sidecar, else the one in the file, else None."""
    side = sidecar_path(path)
    if side.is_file():
        return parse_card(side.read_text(), side, opened.format)
    if opened.card_text:
        return parse_card(opened.card_text, f"{path} (embedded card)", opened.format)
    return None


def _measured_geometry(path: Path, opened: OpenedNetwork, card: ModelCard, dims: int) -> tuple[int, int, int]:
    """``(in_channels, downsampling, reach)``: the card's, the file's, or measured."""
    channels = (
        card.config.get("in_channels") or opened.in_channels or (len(card.bands) if card.bands else None)
    )
    try:
        channels = int(channels) if channels else probe.in_channels(opened.net, dims)
        if card.downsampling is not None and card.reach is not None:
            return channels, int(card.downsampling), int(card.reach)
        factor = card.downsampling or probe.downsampling(opened.net, dims, channels)
        far = card.reach if card.reach is not None else probe.reach(opened.net, dims, channels, factor)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    log.info(
        f"{path}: the card declares no geometry; measured by probing: downsampling {factor}, reach {far} px"
    )
    return channels, int(factor), int(far)


def _output_channels(path: Path, net: torch.nn.Module, channels: int, dims: int, factor: int) -> int:
    """Run one small input through ``net``; its output channels (logits must keep the input's size)."""
    side = -(-max(2 * factor, 16) // factor) * factor
    x = torch.zeros(1, channels, *(side,) * dims)
    try:
        with torch.inference_mode():
            y = net(x)
    except CheckpointError:
        raise
    except Exception as exc:  # the network's own refusal, whatever its runtime
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: fails on a {tuple(x.shape)} input ({first[:200]})") from None
    if not isinstance(y, torch.Tensor) or y.ndim != dims + 2 or tuple(y.shape[2:]) != tuple(x.shape[2:]):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise CheckpointError(
            f"{path}: maps a {tuple(x.shape)} input to {shape}; gigaseg needs logits at the input's size"
        )
    return int(y.shape[1])


def assemble(
    path: str | os.PathLike[str], opened: OpenedNetwork, card: ModelCard
) -> tuple[SegmentationModel, ModelCard]:
    """The wrapped model and the card completed with its geometry, checked against the network."""
    path = Path(path)
    dims = card.spatial_dims or (opened.input_rank - 2 if opened.input_rank else 2)
    channels, factor, far = _measured_geometry(path, opened, card, dims)
    if card.bands is not None and len(card.bands) != channels:
        raise CheckpointError(
            f"{path}: the card selects {len(card.bands)} bands but the model takes {channels} channels"
        )
    classes = _output_channels(path, opened.net, channels, dims, factor)
    if classes != card.num_classes:
        raise CheckpointError(
            f"{path}: the card names {card.num_classes} classes ({', '.join(card.class_names)}) "
            f"but the model outputs {classes} channels"
        )
    config = {**card.config, "in_channels": channels, "num_classes": classes}
    card = replace(card, config=config, spatial_dims=dims, downsampling=factor, reach=far)
    tile = card.tile_size or DEFAULT_TILE.get(dims, 256)
    spec = ArchSpec(
        name=opened.format,
        family="external",
        factory=lambda **_: opened.net,
        spatial_dims=dims,
        downsampling=factor,
        reach=far,
        default_tile=-(-tile // factor) * factor,
        paper="",
        fully_convolutional=_declared_fully_convolutional(card),
    )
    return SegmentationModel(opened.net, spec, config).eval(), card


def _declared_fully_convolutional(card: ModelCard) -> bool:
    """A model exported from a registered architecture is what its registry entry declares;
    any other is taken to have global context (``--blend auto`` then averages tiles)."""
    return card.arch in names() and get_spec(card.arch).fully_convolutional


def load_model_file(
    path: str | os.PathLike[str], card: ModelCard | None = None
) -> tuple[SegmentationModel, ModelCard]:
    """The model in ``path`` (any format gigaseg runs) and its card; ``card`` overrides the file's.

    Nothing here unpickles: safetensors, ONNX protobuf, TorchScript's own archive
    format and ``torch.export``'s JSON graph only; a ``torch.save`` file is refused.
    """
    path = Path(path)
    if model_format(path) == SAFETENSORS:
        return load_checkpoint(path)
    opened = open_model_file(path)
    card = card or embedded_or_sidecar_card(path, opened)
    if card is None:
        raise CheckpointError(
            f"{path}: no model card (none embedded, no {sidecar_path(path).name} beside it); "
            "write one with gigaseg model-card"
        )
    return assemble(path, opened, card)
