"""Block plans: chunk-aligned, a partition of the scene, one writer per chunk."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import TileGrid


@given(
    shape=st.lists(st.integers(1, 400), min_size=2, max_size=3).map(tuple),
    block=st.integers(1, 300),
    chunk=st.sampled_from([16, 32, 64]),
    reach=st.integers(0, 20),
)
@settings(max_examples=80, deadline=None)
def test_blocks_partition_the_scene_along_chunk_edges(shape, block, chunk, reach):
    grid = TileGrid.create(shape, 32, 0.25, 1)
    plan = BlockPlan.create(grid, block, chunk, reach)
    owner = np.full(shape, -1, dtype=np.int64)
    chunk_owner: dict[tuple[int, ...], int] = {}
    for n, b in enumerate(plan):
        sl = tuple(slice(a, z) for a, z in b.region)
        assert (owner[sl] == -1).all(), "two blocks write the same pixel"
        owner[sl] = n
        for (a, z), size in zip(b.region, shape):
            assert a % chunk == 0 and (z % chunk == 0 or z == size)
        # every chunk a block touches belongs to it alone
        ranges = [range(a // chunk, -(-z // chunk)) for a, z in b.region]
        for c in np.ndindex(*[len(r) for r in ranges]):
            key = tuple(r[i] for r, i in zip(ranges, c))
            assert chunk_owner.setdefault(key, n) == n
        for (a, z), (ca, cz), (fa, fz), size in zip(b.region, b.context, b.footprint, shape):
            assert ca == max(0, a - reach) and cz == min(size, z + reach)
            assert fa <= ca and cz <= fz
    assert (owner >= 0).all()
    assert plan.num_blocks == len(list(plan))
