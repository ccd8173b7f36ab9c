"""Scoring on the held-out parts: each region predicted whole (window by window) into a confusion matrix."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import SegmentationModel
from pipeline.evaluation.metrics import confusion, dice_per_class, iou_per_class, nanmean
from pipeline.inputs.normalization import normalize
from pipeline.tiling import regions
from pipeline.tiling.grid import Region
from pipeline.training.data import IGNORE, LabelledScene, region_windows, window_side


@dataclass
class EpochResult:
    """Metrics of one epoch (training loss; held-out accuracy, IoU, Dice)."""

    epoch: int
    train_loss: float
    accuracy: float
    iou: list[float]
    dice: list[float]
    seconds: float

    @classmethod
    def score(cls, epoch: int, losses: Sequence[float], cm: np.ndarray, started: float) -> EpochResult:
        """An epoch's result from its step losses and held-out confusion (``started``: its perf_counter)."""
        return cls(
            epoch,
            float(np.mean(losses)),
            float(np.trace(cm) / max(cm.sum(), 1)),
            _present(iou_per_class(cm), cm),
            _present(dice_per_class(cm), cm),
            time.perf_counter() - started,
        )

    @property
    def miou(self) -> float:
        """Mean IoU over classes present in the held-out part."""
        return nanmean(self.iou)

    @property
    def mdice(self) -> float:
        """Mean Dice over classes present in the held-out part."""
        return nanmean(self.dice)


def _present(values: list[float], cm: np.ndarray) -> list[float]:
    """Per-class scores, NaN for classes absent from the reference (kept out of the means)."""
    truth = cm.sum(1)
    return [float(v) if truth[i] > 0 else float("nan") for i, v in enumerate(values)]


def predict_region(
    model: SegmentationModel,
    scene: LabelledScene,
    region: Region,
    norm: dict[str, Any],
    device: torch.device,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted classes of ``region`` (window by window), with the raw image and the labels."""
    window = window or window_side(len(region))
    shape = tuple(b - a for a, b in region)
    pred = np.full(shape, IGNORE, dtype=np.int64)
    labels = np.full_like(pred, IGNORE)
    raw_all = None
    model.eval()
    with torch.inference_mode():
        for win in region_windows(region, window):
            raw, valid, lab = scene.read(win)
            x = normalize(raw, norm)
            x[:, ~valid] = 0.0
            logits = model(torch.from_numpy(x)[None].to(device))
            logits = logits["out"] if isinstance(logits, dict) else logits
            sl = regions.within(win, region)
            pred[sl] = logits[0].argmax(0).cpu().numpy()
            labels[sl] = lab
            if raw_all is None:
                raw_all = np.zeros((raw.shape[0], *shape), dtype=np.float32)
            raw_all[(slice(None), *sl)] = raw
    pred[labels == IGNORE] = IGNORE
    return pred, labels, raw_all


def validate_held_out(
    model: SegmentationModel,
    scenes: Sequence[LabelledScene],
    norms: Sequence[dict[str, Any]],
    num_classes: int,
    device: torch.device,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Confusion over the held-out parts, and a 2D preview (a volume's middle slice)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    preview: dict[str, np.ndarray] = {}
    for s, norm in zip(scenes, norms):
        if s.val is None:
            continue
        pred, labels, raw = predict_region(model, s, s.val, norm, device)
        cm += confusion(pred, labels, num_classes)
        if not preview:
            middle = (pred.shape[0] // 2,) if pred.ndim == 3 else ()
            preview = {
                "image": raw[(slice(None), *middle)],
                "labels": labels[middle],
                "prediction": pred[middle],
            }
    return cm, preview
