"""The one global tile grid (N-D).

Tile origins lie on a regular lattice ``i * stride`` along every axis, starting at
0. The stride is a multiple of the model's total downsampling factor, so every
tile meets the network at the same phase wherever it falls. The last tile along
an axis may run past the scene edge; the part outside is padded (by the engine)
and never written. Tile positions depend only on the scene shape, the tile size,
the overlap and the alignment: never on blocks, workers or order.

Rules (per axis, ``a`` = alignment):

- tile ``t`` = tile size rounded up to a multiple of ``a``, then capped at the
  scene size rounded up to a multiple of ``a`` (a small scene gets one tile, not a
  huge padded one);
- stride ``s`` = ``t - round(t * overlap)`` rounded down to a multiple of ``a``
  (at least ``a``), so the true overlap is at least the requested one;
- count ``n = 1 + ceil(max(0, size - t) / s)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.tiling.regions import Region


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TileGrid:
    """A regular N-D lattice of equally sized tiles over a scene."""

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    stride: tuple[int, ...]

    @classmethod
    def create(
        cls,
        shape: Sequence[int],
        tile: int | Sequence[int],
        overlap: float,
        align: int | Sequence[int] = 1,
    ) -> TileGrid:
        """Build the grid for a scene of ``shape`` (spatial axes only); ``align`` per axis or for all."""
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"scene shape must be positive, got {shape}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        aligns = (align,) * len(shape) if isinstance(align, int) else tuple(int(a) for a in align)
        if len(aligns) != len(shape) or min(aligns) < 1:
            raise ValueError(f"alignment must be >= 1 per axis, got {align}")
        tiles = (tile,) * len(shape) if isinstance(tile, int) else tuple(tile)
        if len(tiles) != len(shape) or any(int(t) <= 0 for t in tiles):
            raise ValueError(f"tile size must be positive per axis, got {tile}")
        eff_tile = []
        stride = []
        for size, t, a in zip(shape, tiles, aligns):
            t = min(_ceil_to(int(t), a), _ceil_to(size, a))
            s = (t - round(t * overlap)) // a * a
            eff_tile.append(t)
            stride.append(max(a, s))
        return cls(shape, tuple(eff_tile), tuple(stride))

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.shape)

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of tiles along each axis."""
        return tuple(
            1 + math.ceil(max(0, size - t) / s) for size, t, s in zip(self.shape, self.tile, self.stride)
        )

    @property
    def num_tiles(self) -> int:
        """Total number of tiles."""
        return math.prod(self.counts)

    def origin(self, index: Sequence[int]) -> tuple[int, ...]:
        """Scene coordinates of the first pixel of tile ``index``."""
        return tuple(i * s for i, s in zip(index, self.stride))

    def extent(self, index: Sequence[int]) -> Region:
        """The tile's full extent (may run past the scene's far edge)."""
        return tuple((o, o + t) for o, t in zip(self.origin(index), self.tile))

    def index_range(self, region: Region) -> tuple[range, ...]:
        """Per-axis ranges of the tile indices whose extent meets ``region``."""
        ranges = []
        for (r0, r1), t, s, n in zip(region, self.tile, self.stride, self.counts):
            # tile i meets [r0, r1) iff i*s < r1 and i*s + t > r0
            first = max(0, (r0 - t) // s + 1)
            last = min(n, -(-r1 // s))
            ranges.append(range(first, max(first, last)))
        return tuple(ranges)

    def tiles_meeting(self, region: Region) -> Iterator[tuple[int, ...]]:
        """Indices of tiles meeting ``region``, in C order (the blending order)."""
        return itertools.product(*self.index_range(region))

    def all_tiles(self) -> Iterator[tuple[int, ...]]:
        """Every tile index, in C order."""
        return itertools.product(*(range(n) for n in self.counts))

    def footprint(self, region: Region) -> Region:
        """Union of the tiles meeting ``region``, clipped to the scene: what must be read."""
        out = []
        for rng, t, s, size in zip(self.index_range(region), self.tile, self.stride, self.shape):
            out.append((rng.start * s, min(size, (rng.stop - 1) * s + t)))
        return tuple(out)

    def position_flags(self, index: Sequence[int]) -> tuple[tuple[bool, bool], ...]:
        """Per axis: is this the first tile, is it the last (for edge-aware windows)."""
        return tuple((i == 0, i == n - 1) for i, n in zip(index, self.counts))
