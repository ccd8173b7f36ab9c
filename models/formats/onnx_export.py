"""A native gigaseg model → an ONNX file with its card, for deployment elsewhere (or here).

The bare network (without the wrapper's padding, which onnxruntime callers and
gigaseg do themselves) is exported by ``torch.export`` + ``torch.onnx`` (the dynamo
exporter, with ``onnxscript``), with the batch and every spatial axis dynamic. The
card goes into ``metadata_props`` with the geometry the engine needs, so the file
runs in gigaseg with nothing beside it and without probing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, ModelCard
from models.formats.onnx_model import embed_card
from models.wrapper import SegmentationModel

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def with_geometry(card: ModelCard, model: SegmentationModel) -> ModelCard:
    """``card`` with the model's spatial dims, downsampling and reach written in."""
    return replace(card, spatial_dims=model.spatial_dims, downsampling=model.downsampling, reach=model.reach)


def example_input(model: SegmentationModel, batch: int = 2) -> torch.Tensor:
    """A tracing input: two items (a batch of one would be fixed at one), 64 px or two factors a side."""
    side = -(-max(64, 2 * model.downsampling) // model.downsampling) * model.downsampling
    return torch.randn(batch, model.in_channels, *(side,) * model.spatial_dims)


def dynamic_axes(model: SegmentationModel) -> tuple[dict[int, object]]:
    """``torch.export`` dynamic shapes: batch and spatial axes free (``Dim.AUTO``)."""
    free = torch.export.Dim.AUTO
    return ({0: free, **{axis: free for axis in range(2, 2 + model.spatial_dims)}},)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines, warnings and missing-torchvision notes, kept off the terminal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_sizes_stay_free(exported: Path, path: Path, model: SegmentationModel) -> None:
    """Refuse an export whose graph fixed its sizes (a network that computes its own padding from them)."""
    from models.formats.onnx_model import OnnxNetwork

    x = example_input(model, batch=1)
    x = torch.zeros(*x.shape[:-1], x.shape[-1] + model.downsampling)
    try:
        y = OnnxNetwork(exported)(x)
    except Exception:  # onnxruntime's own shape refusal
        y = None
    if y is None or tuple(y.shape[2:]) != tuple(x.shape[2:]):
        raise CheckpointError(
            f"{path}: {model.arch} with {model.config} exports with fixed tile sizes only "
            "(it derives padding from the input size); a configuration with padding='same' exports freely"
        )


def export_onnx(model: SegmentationModel, card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ONNX to ``path`` with ``card`` (plus geometry) embedded; returns the path."""
    path = Path(path)
    net = model.net.eval()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.export")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                net,
                (example_input(model),),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_axes(model),
                dynamo=True,
                verbose=False,
            )
            program.save(str(tmp), external_data=False)  # one file: the card travels with the weights
        embed_card(tmp, with_geometry(card, model).to_json())
        _check_sizes_stay_free(tmp, path, model)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
