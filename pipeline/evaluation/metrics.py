"""Segmentation metrics: confusion matrices, IoU, and label rasters compared window by window."""

from __future__ import annotations

import os

import numpy as np
import rasterio

from pipeline.errors import InputError


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (rows: truth, columns: prediction) over labelled pixels."""
    keep = (truth >= 0) & (truth < num_classes) & (pred < num_classes)
    return np.bincount(truth[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def iou_per_class(cm: np.ndarray) -> list[float]:
    """IoU of each class from a confusion matrix (NaN where the class never occurs)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(denom > 0, tp / denom, np.nan))


def evaluate_labels(
    prediction: str | os.PathLike[str], reference: str | os.PathLike[str], num_classes: int
) -> dict[str, float | list[float]]:
    """Pixel accuracy, per-class IoU and mIoU over pixels labelled in both rasters."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    with rasterio.open(prediction) as pred, rasterio.open(reference) as ref:
        if (pred.width, pred.height) != (ref.width, ref.height):
            raise InputError(f"{reference}: grid differs from {prediction}")
        for _, window in pred.block_windows(1):
            p = pred.read(1, window=window).astype(np.int64)
            t = ref.read(1, window=window).astype(np.int64)
            keep = np.ones_like(t, dtype=bool)
            if ref.nodata is not None:
                keep &= t != int(ref.nodata)
            if pred.nodata is not None:
                keep &= p != int(pred.nodata)
            cm += confusion(p[keep], t[keep], num_classes)
    ious = iou_per_class(cm)
    present = [v for v in ious if not np.isnan(v)]
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "iou": [float(v) for v in ious],
        "miou": float(np.mean(present)) if present else float("nan"),
        "pixels": int(cm.sum()),
    }


def dice_per_class(cm: np.ndarray) -> list[float]:
    """Dice (F1) of each class from a confusion matrix (NaN where the class never occurs)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(denom > 0, 2 * tp / denom, np.nan))


def nanmean(values: list[float]) -> float:
    """Mean over the values that are not NaN (NaN when none is)."""
    present = [v for v in values if not np.isnan(v)]
    return float(np.mean(present)) if present else float("nan")
