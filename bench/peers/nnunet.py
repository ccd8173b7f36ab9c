"""The ``nnunet`` row: nnU-Net v2's sliding-window predictor, from the folder ``make peer-tools`` fills."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
NNUNET_PATH = ROOT / ".venv" / "nnunet"
"""Where ``make peer-tools`` installs nnU-Net v2 and the few packages its predictor imports.

A folder of its own, put on ``sys.path`` by the ``nnunet`` row only: nnU-Net's full
dependency tree pulls torchvision and timm, which do not import with this machine's
torch, and its predictor needs neither.
"""


def nnunet_version() -> str | None:
    """nnU-Net's version in ``NNUNET_PATH`` (what the ``nnunet`` row imports), or None when absent."""
    import importlib.metadata

    found = list(importlib.metadata.distributions(name="nnunetv2", path=[str(NNUNET_PATH)]))
    return found[0].version if found else None


def nnunet_probabilities(
    x: torch.Tensor, model: torch.nn.Module, tile: int, overlap: float, classes: int, device: torch.device
) -> torch.Tensor:
    """nnU-Net v2's sliding window over ``x`` (C, H, W) → softmax probabilities (K, H, W).

    The predictor gets what ``manual_initialization`` would give it from a trained
    model folder, as far as the sliding window reads it: the network, the patch
    size (a 2D configuration over a one-slice stack, as nnU-Net runs 2D models), a
    label manager for ``classes`` labels, and no mirroring. nnU-Net forwards one tile
    at a time and blends logits in float16; its label manager's softmax follows.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    with contextlib.redirect_stdout(sys.stderr):  # it prints about CPU devices
        predictor = nnUNetPredictor(
            tile_step_size=1 - overlap, use_gaussian=True, use_mirroring=False,
            perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False,
        )  # fmt: skip
    predictor.network = model
    predictor.configuration_manager = ConfigurationManager({"patch_size": [tile, tile], "architecture": {}})
    labels = {"background": 0, **{f"class {k}": k for k in range(1, classes)}}
    predictor.label_manager = LabelManager(labels, regions_class_order=None)
    predictor.allowed_mirroring_axes = None
    logits = predictor.predict_sliding_window_return_logits(x[:, None])
    return predictor.label_manager.apply_inference_nonlin(logits[:, 0]).cpu()
