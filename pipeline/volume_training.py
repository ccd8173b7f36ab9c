"""Minimal supervised training of a 3D network on one labelled volume.

Random patches whose centre lies in the training region (the rest of the volume
is held out: its labels never reach the loss), mirrored along the axes the
caller allows, cross-entropy, Adam with a one-cycle schedule. The input is
normalised with the card's intensity mode resolved on this volume by the same
functions inference uses (:mod:`pipeline.scene_statistics`), so a per-volume
z-score, a percentile window or a CT window is applied exactly as at inference.
The checkpoint's card keeps the *unresolved* mode, to be resolved per scene.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import build
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.normalization import normalize
from pipeline.scene_statistics import array_reader, resolve_normalization

IGNORE = -1


@dataclass
class VolumeTrainResult:
    """Where the checkpoint went and how long training took."""

    checkpoint: Path
    steps: int
    seconds: float
    final_loss: float


def train_on_volume(
    image: np.ndarray,
    labels: np.ndarray,
    train_mask: np.ndarray,
    checkpoint: str | os.PathLike[str],
    class_names: Sequence[str],
    normalization: Mapping[str, Any],
    arch: str = "unet3d",
    arch_config: Mapping[str, Any] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    patch: int = 32,
    batch_size: int = 2,
    steps: int = 300,
    lr: float = 3e-3,
    flip_axes: Sequence[int] = (0, 1),
    tile_size: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> VolumeTrainResult:
    """Fit ``arch`` on ``image`` ``(C, Z, Y, X)`` / ``labels`` ``(Z, Y, X)`` where ``train_mask`` holds."""
    t0 = time.perf_counter()
    shape = labels.shape
    if image.shape[1:] != shape or train_mask.shape != shape:
        raise ValueError(f"image {image.shape}, labels {shape} and mask {train_mask.shape} disagree")
    spec = resolve_normalization(normalization, array_reader(image), shape, slab=max(1, shape[0]))
    x_all = torch.from_numpy(normalize(image, spec))
    target = labels.astype(np.int64).copy()
    target[~train_mask] = IGNORE
    y_all = torch.from_numpy(target)
    centres = np.argwhere(train_mask)
    size = [min(patch, s) for s in shape]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(arch, in_channels=image.shape[0], num_classes=len(class_names), **dict(arch_config or {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    loss = torch.zeros(())
    for step in range(steps):
        xs, ys = [], []
        for centre in centres[rng.integers(0, len(centres), batch_size)]:
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, size, shape)]
            sl = tuple(slice(a, a + p) for a, p in zip(start, size))
            x, y = x_all[(slice(None), *sl)], y_all[sl]
            for axis in flip_axes:
                if rng.random() < 0.5:
                    x, y = x.flip(axis + 1), y.flip(axis)
            xs.append(x)
            ys.append(y)
        out = model(torch.stack(xs))
        logits = out["out"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits, torch.stack(ys), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    card = ModelCard(
        arch=arch,
        config=dict(model.config),
        class_names=list(class_names),
        class_colors=[tuple(c) for c in class_colors] if class_colors else [],
        normalization=dict(normalization),
        tile_size=tile_size,
        training={"steps": steps, "patch": patch, "batch_size": batch_size, "lr": lr, "seed": seed},
    )
    save_checkpoint(checkpoint, model, card)
    return VolumeTrainResult(Path(checkpoint), steps, time.perf_counter() - t0, float(loss.item()))
