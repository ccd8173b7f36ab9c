"""The peers without a library: chip prediction (averaged or edge-cropped) and naive non-overlapping tiles.

Each takes the normalised scene ``x`` (C, H, W) whole in memory and a ``predict``
function (batch of tiles → probabilities), as TorchGeo / Raster Vision users write it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


def labels_of(probs: torch.Tensor) -> torch.Tensor:
    """Labels from ``(K, *spatial)`` probabilities (max over the class axis: argmax, but fast on CPU)."""
    return torch.max(probs, dim=0)[1].to(torch.uint8)


def chip_starts(size: int, tile: int, stride: int) -> list[int]:
    """Chip origins along one axis: every ``stride``, the last one flush with the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _chip_origins(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int]]:
    return [(r, c) for r in chip_starts(h, tile, stride) for c in chip_starts(w, tile, stride)]


def chips_average(
    x: torch.Tensor, predict: Predict, tile: int, stride: int, batch: int, classes: int
) -> torch.Tensor:
    """Chips at ``stride``, the probabilities of overlapping chips averaged (TorchGeo style)."""
    _, h, w = x.shape
    acc = torch.zeros((classes, h, w), dtype=torch.float32)
    count = torch.zeros((h, w), dtype=torch.float32)
    origins = _chip_origins(h, w, tile, stride)
    for i in range(0, len(origins), batch):
        part = origins[i : i + batch]
        t = torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])
        p = predict(t).cpu()
        for (r, c), q in zip(part, p):
            acc[:, r : r + q.shape[1], c : c + q.shape[2]] += q
            count[r : r + q.shape[1], c : c + q.shape[2]] += 1
    acc /= count
    return acc


def chips_crop(
    x: torch.Tensor, predict: Predict, tile: int, stride: int, batch: int, classes: int
) -> torch.Tensor:
    """Chips at ``stride``, each keeping its centre (Raster Vision's ``crop_sz``).

    ``(tile - stride) // 2`` px are cropped off every side of a chip that is not on
    the scene's edge; a later chip overwrites what an earlier one wrote. No blending.
    """
    _, h, w = x.shape
    crop = (tile - stride) // 2
    out = torch.empty((classes, h, w), dtype=torch.float32)
    origins = _chip_origins(h, w, tile, stride)

    def kept(start: int, size: int) -> tuple[int, int]:
        return (0 if start == 0 else crop), (tile if start + tile >= size else tile - crop)

    for i in range(0, len(origins), batch):
        part = origins[i : i + batch]
        t = torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])
        for (r, c), q in zip(part, predict(t).cpu()):
            (r0, r1), (c0, c1) = kept(r, h), kept(c, w)
            out[:, r + r0 : r + r1, c + c0 : c + c1] = q[:, r0:r1, c0:c1]
    return out


def naive_tiles(
    x: torch.Tensor, predict: Predict, tile: int, batch: int, classes: int, keep_probs: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Non-overlapping tiles (edge tiles one by one, cut short): labels, and probabilities if kept."""
    _, h, w = x.shape
    labels = torch.empty((h, w), dtype=torch.uint8)
    probs = torch.empty((classes, h, w), dtype=torch.float32) if keep_probs else None
    full = [(r, c) for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)]
    edge = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile) if r + tile > h or c + tile > w]

    def put(r: int, c: int, q: torch.Tensor) -> None:
        labels[r : r + q.shape[1], c : c + q.shape[2]] = labels_of(q)
        if probs is not None:
            probs[:, r : r + q.shape[1], c : c + q.shape[2]] = q

    for i in range(0, len(full), batch):
        part = full[i : i + batch]
        for (r, c), q in zip(
            part, predict(torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])).cpu()
        ):
            put(r, c, q)
    for r, c in edge:
        put(r, c, predict(x[None, :, r : r + tile, c : c + tile])[0].cpu())
    return labels, probs
