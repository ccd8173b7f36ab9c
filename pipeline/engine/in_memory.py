"""The engine over an array already in memory: blockwise, so extra memory is one block's worth.

For callers that hold the image as a numpy array (a notebook, another pipeline,
the peer benchmark) and want the same result as ``gigaseg segment`` without the
stores: the same global tile grid, blending and blocks, with the array standing
in for the scene store. Memory beyond the input and the labels is bounded by the
block (as in the file pipeline), not by the scene: the probabilities of the whole
scene are only held when asked for.

:func:`predict_in_memory` is the whole scene as one context: the reference every
blockwise run must equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models import SegmentationModel
from pipeline.engine.block import Refiner, infer_block, infer_context
from pipeline.engine.finishing import finish_block
from pipeline.engine.predictor import TilePredictor
from pipeline.engine.tile_batches import Footprint
from pipeline.inputs.normalization import Normalizer, normalizer_for
from pipeline.stores.block_output import BlockOutput
from pipeline.stores.labels import label_dtype
from pipeline.tiling import regions
from pipeline.tiling.blending import AUTO, BlendWindow, resolve_blend
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import TileGrid
from pipeline.tiling.regions import Region


@dataclass
class ArrayResult:
    """Labels (nodata = dtype max) and, when asked, float32 probabilities (NaN where nodata)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    tiles_run: int


def segment_array(
    image: np.ndarray,
    model: SegmentationModel,
    tile: int,
    overlap: float = 0.25,
    blend: str = AUTO,
    valid: np.ndarray | None = None,
    normalizer: Normalizer | None = None,
    block: int = 4096,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = True,
    with_probabilities: bool = False,
    on_block: Callable[[int], None] | None = None,
) -> ArrayResult:
    """Segment a ``(C, *spatial)`` array block by block on the global grid.

    ``valid`` (``(*spatial)`` bool, default all valid) marks nodata; ``normalizer``
    maps a raw ``(C, *region)`` block to float32 model input (default: a float32 copy).
    Equal to the whole-scene pass (:func:`predict_in_memory`) and to
    ``gigaseg segment`` with the same grid, blending and block size.
    """
    if image.ndim != model.spatial_dims + 1:
        raise ValueError(f"expected (C, *spatial) with {model.spatial_dims} spatial axes, got {image.shape}")
    spatial = image.shape[1:]
    if valid is not None and valid.shape != spatial:
        raise ValueError(f"valid mask shape {valid.shape} differs from the image's {spatial}")
    grid = TileGrid.create(spatial, tile, overlap, align=model.downsampling)
    window = BlendWindow(grid, resolve_blend(blend, getattr(model, "fully_convolutional", False)))
    plan = BlockPlan.create(grid, block, block)
    predictor = TilePredictor(model, torch.device(device), batch_size, amp, channels_last=channels_last)
    predictor.fit_to_memory((image.shape[0], *grid.tile))
    labels = np.empty(spatial, dtype=label_dtype(model.num_classes))
    probs = np.empty((model.num_classes, *spatial), np.float32) if with_probabilities else None

    def read(region: Region) -> tuple[np.ndarray, np.ndarray]:
        sl = regions.slices(region)
        mask = valid[sl] if valid is not None else np.broadcast_to(np.True_, regions.shape(region))
        return image[(slice(None), *sl)], mask

    for b in plan:
        out = infer_block(
            read,
            b,
            grid,
            window,
            predictor,
            normalizer or normalizer_for(None),
            model.num_classes,
            with_probabilities,
        )
        sl = regions.slices(b.region)
        labels[sl] = out.labels
        if probs is not None:
            probs[(slice(None), *sl)] = out.probabilities
        if on_block is not None:
            on_block(b.num_pixels)
    return ArrayResult(labels, probs, predictor.tiles_run)


def predict_in_memory(
    raw: np.ndarray,
    valid: np.ndarray,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    normalizer: Normalizer,
    num_classes: int,
    refiner: Refiner | None = None,
) -> BlockOutput:
    """The whole scene in one piece (the reference the blockwise run must equal)."""
    scene = regions.whole(grid.shape)
    result = infer_context(Footprint(raw, valid, scene, normalizer), scene, grid, window, predictor, refiner)
    return finish_block(result, scene, scene, num_classes, with_probabilities=True)
