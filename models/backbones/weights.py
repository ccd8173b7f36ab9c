"""Load ImageNet-pretrained weights into a backbone from a file, without pickles.

Users with internet access download a classification checkpoint (safetensors,
or a PyTorch state dict file) and pass it as ``--backbone-weights FILE``. The
backbones here use the parameter names of those checkpoints, so loading is a
name-for-name copy; the classifier head of the checkpoint is ignored, and
anything else that does not match is an error that names the offending keys.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

_SHOW = 8  # keys listed per kind of mismatch in an error message


class BackboneWeightsError(ValueError):
    """A weights file that does not fit the backbone."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``torch.save``-d state dict (``weights_only=True``).

    A checkpoint that wraps its state dict (``{"state_dict": …}`` or
    ``{"model": …}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such weights file")
    with path.open("rb") as f:
        head = f.read(9)
    is_safetensors = path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    try:
        if is_safetensors:
            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError) as exc:
        # weights_only refuses arbitrary pickled objects: a file that needs them is not weights.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneWeightsError(f"{path}: not a readable weights file ({first_line})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(obj)


def _backbone_of(target: nn.Module) -> nn.Module:
    """The backbone inside a built model (or ``target`` itself when it is a backbone)."""
    net = getattr(target, "net", target)  # a SegmentationModel wraps the bare network
    backbone = getattr(net, "backbone", net)
    if not hasattr(backbone, "IGNORED_PREFIXES"):
        raise BackboneWeightsError(f"{type(net).__name__} has no pretrained backbone to load weights into")
    return backbone


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > _SHOW else "")


def load_backbone_weights(target: nn.Module, path: str | os.PathLike[str], prefix: str = "") -> list[str]:
    """Copy the weights in ``path`` into the backbone of ``target``; return the ignored keys.

    ``target`` is a built model (``models.build(...)``), its bare network, or a
    backbone. Keys under the backbone's classifier prefixes (``fc.``,
    ``classifier.`` …) are ignored; ``prefix`` selects and strips a key prefix
    (e.g. ``"backbone."`` to take the backbone out of a full segmentation
    checkpoint); a ``module.`` prefix from data-parallel training is stripped.
    Batch-norm ``num_batches_tracked`` counters may be absent (older checkpoints
    lack them). Any other missing, unexpected or mis-shaped key raises
    :class:`BackboneWeightsError` and leaves the backbone unchanged.
    """
    backbone = _backbone_of(target)
    state = read_state_dict(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise BackboneWeightsError(f"{path}: no keys start with {prefix!r}")
    ignored_prefixes = tuple(backbone.IGNORED_PREFIXES)
    ignored = sorted(k for k in state if k.startswith(ignored_prefixes))
    wanted = backbone.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(ignored_prefixes)}

    missing = sorted(k for k in wanted if k not in given and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in given if k not in wanted)
    misshaped = sorted(
        f"{k} (file {tuple(v.shape)}, model {tuple(wanted[k].shape)})"
        for k, v in given.items()
        if k in wanted and v.shape != wanted[k].shape
    )
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing from the file: {_listing(missing)}")
        if unexpected:
            problems.append(f"not in the backbone: {_listing(unexpected)}")
        if misshaped:
            problems.append(f"shape mismatch: {_listing(misshaped)}")
        raise BackboneWeightsError(
            f"{path} does not fit {type(backbone).__name__} "
            f"({len(wanted)} tensors): "
            + "; ".join(problems)
            + ". Is it a checkpoint of the same architecture, depth and width, "
            "with the same number of input channels?"
        )
    merged = dict(wanted)
    merged.update({k: v.to(wanted[k].dtype) for k, v in given.items()})
    backbone.load_state_dict(merged, strict=True)
    return ignored
