"""Output blocks: the unit of work, aligned to output chunks, plus their halo.

A block is a box of whole output chunks (only the last block along an axis may
be smaller, where the scene ends), so no two blocks ever write the same chunk.
To compute a block exactly as a whole-scene pass would, the engine needs the
blended probabilities over the block grown by the refinement reach (the CRF's
``iterations × radius``, 0 without CRF), and for those, every tile meeting that
region: the block's *footprint*, which is what is read from the scene store.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.tiling.grid import TileGrid
from pipeline.tiling.regions import Region


@dataclass(frozen=True)
class Block:
    """One output block: its index in the block lattice and its regions."""

    index: tuple[int, ...]
    region: Region
    """The pixels this block writes."""
    context: Region
    """``region`` grown by the refinement reach and clipped: where probabilities are blended."""
    footprint: Region
    """Union of the tiles meeting ``context``, clipped to the scene: what is read."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Size of the written region."""
        return tuple(b - a for a, b in self.region)

    @property
    def num_pixels(self) -> int:
        """Pixels (voxels) this block writes."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class BlockPlan:
    """All blocks of a scene for one grid, block shape and refinement reach."""

    grid: TileGrid
    block_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    reach: tuple[int, ...]

    @classmethod
    def create(
        cls,
        grid: TileGrid,
        block: int | Sequence[int],
        chunk: int | Sequence[int],
        reach: int | Sequence[int] = 0,
    ) -> BlockPlan:
        """Plan blocks of ``block`` pixels (rounded up to whole ``chunk``s) over ``grid``'s scene."""
        nd = grid.ndim
        chunks = (chunk,) * nd if isinstance(chunk, int) else tuple(chunk)
        blocks = (block,) * nd if isinstance(block, int) else tuple(block)
        reaches = (reach,) * nd if isinstance(reach, int) else tuple(reach)
        if any(c <= 0 for c in chunks) or any(b <= 0 for b in blocks):
            raise ValueError("block and chunk sizes must be positive")
        if any(r < 0 for r in reaches):
            raise ValueError("refinement reach must be >= 0")
        # Whole chunks per block, never more than the scene needs.
        aligned = tuple(
            min(-(-b // c) * c, -(-size // c) * c) for b, c, size in zip(blocks, chunks, grid.shape)
        )
        return cls(grid, aligned, chunks, tuple(int(r) for r in reaches))

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(-(-s // b) for s, b in zip(self.grid.shape, self.block_shape))

    @property
    def num_blocks(self) -> int:
        """Total number of blocks."""
        return math.prod(self.counts)

    def block(self, index: Sequence[int]) -> Block:
        """The block at lattice position ``index``."""
        index = tuple(int(i) for i in index)
        region = tuple(
            (i * b, min(size, (i + 1) * b)) for i, b, size in zip(index, self.block_shape, self.grid.shape)
        )
        context = tuple(
            (max(0, a - r), min(size, z + r)) for (a, z), r, size in zip(region, self.reach, self.grid.shape)
        )
        return Block(index, region, context, self.grid.footprint(context))

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(n) for n in self.counts)):
            yield self.block(index)

    def flat_index(self, index: Sequence[int]) -> int:
        """Row-major number of a block (for progress and logs)."""
        flat = 0
        for i, n in zip(index, self.counts):
            flat = flat * n + i
        return flat
