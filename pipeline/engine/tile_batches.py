"""Batches of tiles cut from the footprint read around a context, run through the predictor.

Each tile's in-scene part is normalised, its nodata zeroed and its far side padded
(:mod:`pipeline.engine.padding`), so a tile's input depends only on the global grid,
never on the block it is cut for. Input and probabilities live in two buffers
reused by every batch of a region, so batches do not churn the heap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.wrapper import pad_far_side
from pipeline.engine.predictor import TilePredictor
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
    normalizer: Callable[[np.ndarray], np.ndarray]
    """The model's input normalisation, applied per tile (nodata then set to 0)."""


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
        x = footprint.normalizer(footprint.raw[(slice(None), *sl)])
        if valid is not None:
            x[:, ~valid[sl]] = 0.0  # nodata never reaches the network
        if x.shape[1:] == tuple(tile):
            batch[k] = x
        else:
            # F.pad's reflect/replicate need a batch axis for N-D inputs.
            batch[k] = pad_far_side(torch.from_numpy(x)[None], tile)[0].numpy()
    return batch


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
