"""Batches of tiles cut from the footprint read around a context, run through the predictor.

Each tile's in-scene part is normalised, its nodata zeroed and its far side padded
(:mod:`pipeline.engine.padding`), so a tile's input depends only on the global grid,
never on the block it is cut for. Input and probabilities live in two buffers
reused by every batch of a region, so batches do not churn the heap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.engine.predictor import TilePredictor
from pipeline.inputs.normalization import Normalizer
from pipeline.tiling import regions
from pipeline.tiling.regions import Region


@dataclass
class Footprint:
    """The input as read around a context: every tile meeting the context is cut from it."""

    raw: np.ndarray
    """``(C, *region)`` as read."""
    valid: np.ndarray
    """``(*region)`` bool: the pixels with data."""
    region: Region
    normalizer: Normalizer
    """The model's input normalisation, applied per tile straight into the batch (nodata then set to 0)."""


def _all_true(mask: np.ndarray) -> bool:
    """``mask.all()``, at once for a broadcast constant (a scene without nodata reads as one)."""
    if mask.size and not any(mask.strides):
        return bool(mask.flat[0])
    return bool(mask.all())


def _cut_tiles(
    footprint: Footprint, valid: np.ndarray | None, extents: Sequence[Region], out: np.ndarray
) -> np.ndarray:
    """``(N, C, *tile)`` float32 in ``out``: each tile's in-scene part normalised, nodata zeroed, padded.

    Normalisation is pointwise with fixed parameters, so normalising a tile gives
    the same bits as normalising the whole footprint and cutting; doing it per
    tile keeps only the raw footprint (1 byte/px for 8-bit imagery) in memory
    instead of a float32 copy of it. ``valid`` is None when every pixel is valid.
    """
    batch = out[: len(extents)]
    tile = batch.shape[2:]
    for k, ext in enumerate(extents):
        sl = regions.within(ext, footprint.region)
        raw = footprint.raw[(slice(None), *sl)]
        have = raw.shape[1:]
        x = footprint.normalizer(raw, out=batch[(k, slice(None), *(slice(0, n) for n in have))])
        if valid is not None:
            x[:, ~valid[sl]] = 0.0  # nodata never reaches the network
        if have != tuple(tile):
            fill_far_side(batch[k], have)
    return batch


def fill_far_side(tile: np.ndarray, have: Sequence[int]) -> None:
    """Pad ``(C, *size)`` in place: its data is in ``[:, :have[0], :have[1], …]``, the far sides are filled.

    The rule of :func:`models.wrapper.pad_far_side` (reflection, or edge repetition on
    every axis when one axis is too short to reflect), axis after axis in place: the
    same values without the padded copy torch makes.

    >>> t = np.zeros((1, 5), np.float32); t[0, :3] = [1, 2, 3]; fill_far_side(t, (3,)); t.tolist()
    [[1.0, 2.0, 3.0, 2.0, 1.0]]
    """
    size = tile.shape[1:]
    reflect = all(s - n < n for n, s in zip(have, size))
    for axis, (n, s) in enumerate(zip(have, size)):
        if s == n:
            continue
        before = (slice(None), *(slice(None),) * axis)
        after = tuple(slice(0, m) for m in have[axis + 1 :])
        if reflect:
            source = slice(n - 2, n - 2 - (s - n) if n - 2 - (s - n) >= 0 else None, -1)
        else:
            source = slice(n - 1, n)
        tile[(*before, slice(n, s), *after)] = tile[(*before, source, *after)]


class TileBatches:
    """Cuts batch after batch of tiles from a footprint and returns their probabilities.

    The probability buffer is the first full batch's output, handed back to the
    predictor for every later batch.
    """

    def __init__(self, footprint: Footprint, tile: Sequence[int], predictor: TilePredictor, num_tiles: int):
        self.footprint = footprint
        self.predictor = predictor
        self.some_invalid = None if _all_true(footprint.valid) else footprint.valid
        shape = (min(num_tiles, predictor.batch_size), footprint.raw.shape[0], *tile)
        self.inputs = np.empty(shape, dtype=np.float32)
        self.probabilities: torch.Tensor | None = None

    def predict(self, extents: Sequence[Region]) -> torch.Tensor:
        """``(N, classes, *tile)`` probabilities of the tiles whose in-scene parts are ``extents``."""
        x = torch.from_numpy(_cut_tiles(self.footprint, self.some_invalid, extents, self.inputs))
        device = self.predictor.device
        if device.type == "cuda":
            x = x.pin_memory()  # the caching host allocator keeps it alive until copied
        out = None if self.probabilities is None else self.probabilities[: len(extents)]
        probs = self.predictor(x.to(device, non_blocking=True), out=out)
        if self.probabilities is None and len(extents) == len(self.inputs):
            self.probabilities = probs
        return probs
