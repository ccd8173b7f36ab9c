"""One output block end to end: read its footprint, blend (streamed, or whole and refined), finish."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.engine.accumulation import RegionResult, blend_region
from pipeline.engine.finishing import BlockFinisher, finish_block
from pipeline.engine.predictor import TilePredictor
from pipeline.engine.tile_batches import Footprint
from pipeline.inputs.normalization import Normalizer
from pipeline.stores.block_output import BlockOutput
from pipeline.tiling import regions
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.blocks import Block
from pipeline.tiling.grid import TileGrid
from pipeline.tiling.regions import Region

Refiner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(probs (C, *ctx), image (B, *ctx), valid (*ctx)) → refined probs: the CRF hook."""


def infer_context(
    footprint: Footprint,
    context: Region,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    refiner: Refiner | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> RegionResult:
    """Blend (and optionally refine) over ``context`` from the raw footprint."""
    result = blend_region(footprint, context, grid, window, predictor, on_tiles)
    assert result is not None
    if refiner is not None:
        sl = regions.within(context, footprint.region)
        feats = torch.from_numpy(np.ascontiguousarray(footprint.raw[(slice(None), *sl)])).to(predictor.device)
        refined = refiner(result.probabilities, feats.float(), result.covered)
        result = RegionResult(refined, result.covered)
    return result


class _BlockRows:
    """Hands the streamed rows of a block's context that fall in the block, cropped, to its finisher."""

    def __init__(self, block: Block, finisher: BlockFinisher):
        self.sl = regions.within(block.region, block.context)
        self.first, self.last = self.sl[0].start, self.sl[0].stop
        self.finisher = finisher

    def __call__(self, start: int, probs: torch.Tensor, covered: torch.Tensor | None) -> None:
        a, b = max(start, self.first), min(start + probs.shape[1], self.last)
        if a < b:
            rows = slice(a - start, b - start)
            across = self.sl[1:]
            mask = None if covered is None else covered[(rows, *across)]
            self.finisher.add(a - self.first, probs[(slice(None), rows, *across)], mask)


def infer_block(
    read: Callable[[Region], tuple[np.ndarray, np.ndarray]],
    block: Block,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    normalizer: Normalizer,
    num_classes: int,
    with_probabilities: bool = False,
    refiner: Refiner | None = None,
    on_tiles: Callable[[int], None] | None = None,
    with_uncertainty: bool = False,
) -> BlockOutput:
    """Compute one output block: read its footprint, blend, refine, crop.

    Without a refiner the blend is streamed (rows finished as the tiles pass, see
    :func:`~pipeline.engine.accumulation.blend_region`); the CRF needs the whole
    context's probabilities at once.
    """
    raw, valid = read(block.footprint)
    footprint = Footprint(raw, valid, block.footprint, normalizer)
    if refiner is not None:
        result = infer_context(footprint, block.context, grid, window, predictor, refiner, on_tiles)
        return finish_block(
            result, block.context, block.region, num_classes, with_probabilities, with_uncertainty
        )
    finisher = BlockFinisher(regions.shape(block.region), num_classes, with_probabilities, with_uncertainty)
    blend_region(footprint, block.context, grid, window, predictor, on_tiles, _BlockRows(block, finisher))
    return finisher.output()
