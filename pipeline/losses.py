"""Training losses: cross-entropy, soft Dice, their sum, and auxiliary (deep-supervision) heads.

All ignore pixels labelled ``ignore_index`` (nodata).
"""

from __future__ import annotations

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


def segmentation_loss(
    output: torch.Tensor | dict[str, Any],
    target: torch.Tensor,
    kind: str = "ce",
    aux_weight: float = 0.4,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Loss of a model output (logits, or ``{"out": logits, "aux": [...]}``) against labels.

    Each auxiliary head gets the same loss scaled by ``aux_weight``.
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
        for aux in output.get("aux", []):
            loss = loss + aux_weight * one(aux)
        return loss
    return one(output)
