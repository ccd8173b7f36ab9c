"""Minimal supervised training: fit a registered network on one labelled raster.

Enough for the main job to have a model that does something real: random tiles
from the training part of the scene (the right-most ``val_fraction`` of columns
is held out), flips and 90° rotations, cross-entropy ignoring nodata labels,
Adam. The result is a checkpoint whose card carries the bands, the
normalisation (per-band mean/std of the training pixels), class names and
colours, and the tile size. The full training flow (MLflow, Dice, early stopping,
resumable checkpoints) builds on this.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from models import build
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.errors import InputError
from pipeline.metrics import confusion, iou_per_class
from pipeline.raster_input import inspect_raster
from pipeline.trainer import load_pretrained_backbone


@dataclass
class TrainResult:
    """Where the checkpoint went and how well it does on the held-out columns."""

    checkpoint: Path
    steps: int
    seconds: float
    val_accuracy: float
    val_iou: list[float]

    @property
    def val_miou(self) -> float:
        """Mean IoU over classes present in the validation part."""
        present = [v for v in self.val_iou if not np.isnan(v)]
        return float(np.mean(present)) if present else float("nan")


def _read_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    img_info = inspect_raster(image_path)
    lab_info = inspect_raster(label_path)
    if (img_info.height, img_info.width) != (lab_info.height, lab_info.width):
        raise InputError(
            f"{label_path}: {lab_info.width}×{lab_info.height} does not match the image's "
            f"{img_info.width}×{img_info.height}"
        )
    with rasterio.open(image_path) as src:
        image = src.read(list(img_info.bands)).astype(np.float32)
        valid = src.dataset_mask() > 0
    with rasterio.open(label_path) as src:
        labels = src.read(1).astype(np.int64)
        nodata = src.nodata
        tags = src.tags(1)
    ignore = -1
    if nodata is not None:
        labels[labels == int(nodata)] = ignore
    labels[~valid] = ignore
    names = json.loads(tags["CLASS_NAMES"]) if "CLASS_NAMES" in tags else None
    return image, labels, ignore, names


def train_on_raster(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    arch: str = "unet",
    arch_config: dict | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    tile: int = 128,
    batch_size: int = 8,
    steps: int = 300,
    lr: float = 2e-3,
    val_fraction: float = 0.2,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Fit ``arch`` on the pair and write a checkpoint; returns held-out metrics."""
    t0 = time.perf_counter()
    image_path, label_path = Path(image_path), Path(label_path)
    image, labels, ignore, tagged_names = _read_pair(image_path, label_path)
    num_classes = int(labels.max()) + 1
    names = list(class_names or tagged_names or [f"class_{i}" for i in range(num_classes)])
    num_classes = max(num_classes, len(names))
    h, w = labels.shape
    split = int(w * (1 - val_fraction))
    if split < tile or h < tile:
        raise InputError(f"{image_path}: {w}×{h} is too small for {tile}-pixel training tiles")

    train_valid = labels[:, :split] != ignore
    mean = [float(image[b, :, :split][train_valid].mean()) for b in range(image.shape[0])]
    std = [float(image[b, :, :split][train_valid].std() + 1e-6) for b in range(image.shape[0])]
    norm = ((image - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]).astype(np.float32)
    norm[:, labels == ignore] = 0.0

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(arch, in_channels=image.shape[0], num_classes=num_classes, **(arch_config or {}))
    if backbone_weights is not None:
        load_pretrained_backbone(model, Path(backbone_weights), log)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    x_all = torch.from_numpy(norm)
    y_all = torch.from_numpy(labels)
    model.train()
    for step in range(steps):
        rows = rng.integers(0, h - tile + 1, batch_size)
        cols = rng.integers(0, split - tile + 1, batch_size)
        xs, ys = [], []
        for r, c in zip(rows, cols):
            x = x_all[:, r : r + tile, c : c + tile]
            y = y_all[r : r + tile, c : c + tile]
            k = int(rng.integers(4))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if rng.random() < 0.5:
                x, y = x.flip(2), y.flip(1)
            xs.append(x)
            ys.append(y)
        out = model(torch.stack(xs))
        logits = out["out"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits, torch.stack(ys), ignore_index=ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps} loss {loss.item():.3f}")

    model.eval()
    val_x = x_all[:, :, split:]
    with torch.inference_mode():
        pred = model(val_x[None])[0].argmax(0).numpy()
    cm = confusion(pred, labels[:, split:], num_classes)
    accuracy = float(np.trace(cm) / max(cm.sum(), 1))
    card = ModelCard(
        arch=arch,
        config=dict(model.config),
        class_names=names,
        class_colors=[tuple(c) for c in class_colors] if class_colors else [],
        bands=None,
        normalization={"kind": "meanstd", "mean": mean, "std": std},
        tile_size=max(256, tile),
        training={
            "image": str(image_path),
            "labels": str(label_path),
            "steps": steps,
            "tile": tile,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "val_fraction": val_fraction,
            "val_accuracy": accuracy,
        },
    )
    save_checkpoint(checkpoint, model, card)
    return TrainResult(Path(checkpoint), steps, time.perf_counter() - t0, accuracy, iou_per_class(cm))
