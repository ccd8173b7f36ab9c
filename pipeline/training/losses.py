"""Training losses: cross-entropy, soft Dice, their sum, auxiliary (deep-supervision) heads and
EncNet's semantic-encoding (SE) loss.

All ignore pixels labelled ``ignore_index`` (nodata).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

LOSSES = ("ce", "dice", "ce+dice")


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1, eps: float = 1.0
) -> torch.Tensor:
    """1 − mean soft Dice over the classes present in the batch (labelled pixels only)."""
    num_classes = logits.shape[1]
    keep = target != ignore_index
    probs = logits.float().softmax(1) * keep.unsqueeze(1)
    onehot = F.one_hot(target.clamp(min=0), num_classes).movedim(-1, 1).float() * keep.unsqueeze(1)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + eps) / (total + eps)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def class_presence(target: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """``(N, num_classes)`` float: 1 where the class occurs among image ``n``'s labelled pixels."""
    n = target.shape[0]
    flat = target.reshape(n, -1).clone()
    flat[(flat == ignore_index) | (flat < 0) | (flat >= num_classes)] = num_classes  # a discarded bin
    present = torch.zeros(n, num_classes + 1, device=target.device)
    present.scatter_(1, flat, 1.0)
    return present[:, :num_classes]


def se_loss(presence_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """EncNet's semantic-encoding loss: binary cross-entropy of per-image class presence."""
    presence = class_presence(target, presence_logits.shape[1], ignore_index)
    return F.binary_cross_entropy_with_logits(presence_logits.float(), presence)


def segmentation_loss(
    output: torch.Tensor | dict[str, Any],
    target: torch.Tensor,
    kind: str = "ce",
    aux_weight: float | Sequence[float] = 0.4,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = -1,
    se_weight: float = 0.0,
) -> torch.Tensor:
    """Loss of a model output (logits, or ``{"out": logits, "aux": [...], "se": ...}``) against labels.

    Auxiliary head ``i`` gets the same loss scaled by ``aux_weight[i]`` (one
    number: the same weight for every head). An ``"se"`` entry (per-image class
    presence logits, EncNet) adds ``se_weight ·`` :func:`se_loss`.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")

    def one(logits: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if "ce" in kind:
            ce = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index)
            loss = loss + torch.nan_to_num(ce)  # a batch with no labelled pixel gives NaN
        if "dice" in kind:
            loss = loss + dice_loss(logits, target, ignore_index)
        return loss

    if isinstance(output, dict):
        loss = one(output["out"])
        heads = output.get("aux", [])
        weights = [float(aux_weight)] * len(heads) if isinstance(aux_weight, int | float) else aux_weight
        if len(weights) != len(heads):
            raise ValueError(f"{len(heads)} auxiliary outputs but {len(weights)} weights")
        for aux, weight in zip(heads, weights):
            loss = loss + float(weight) * one(aux)
        if "se" in output and se_weight:
            loss = loss + se_weight * se_loss(output["se"], target, ignore_index)
        return loss
    return one(output)
