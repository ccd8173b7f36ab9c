"""The global tile grid: coverage, alignment, and independence from everything but shape/tile/overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tiling.grid import TileGrid

shapes = st.lists(st.integers(1, 300), min_size=1, max_size=3).map(tuple)


@given(
    shape=shapes, tile=st.integers(1, 128), overlap=st.floats(0, 0.95), align=st.sampled_from([1, 2, 8, 16])
)
@settings(max_examples=150, deadline=None)
def test_every_pixel_is_covered_and_tiles_are_aligned(shape, tile, overlap, align):
    grid = TileGrid.create(shape, tile, overlap, align)
    covered = [np.zeros(s, dtype=bool) for s in shape]
    for axis, (n, t, s) in enumerate(zip(grid.counts, grid.tile, grid.stride)):
        assert t % align == 0 and s % align == 0
        assert 0 < s <= t
        for i in range(n):
            covered[axis][i * s : i * s + t] = True
        # the last tile reaches the edge, and no tile starts past it
        assert (n - 1) * s + t >= shape[axis]
        assert (n - 1) * s < shape[axis]
    assert all(c.all() for c in covered)


@given(shape=shapes, tile=st.integers(8, 96), overlap=st.floats(0, 0.9))
@settings(max_examples=100, deadline=None)
def test_overlap_is_at_least_the_requested_one(shape, tile, overlap):
    grid = TileGrid.create(shape, tile, overlap, align=1)
    for size, t, s in zip(shape, grid.tile, grid.stride):
        if t < size:  # more than one tile along the axis
            assert t - s >= round(t * overlap) - 0


@given(shape=shapes, tile=st.integers(4, 64), overlap=st.floats(0, 0.8), data=st.data())
@settings(max_examples=40, deadline=None)
def test_tiles_meeting_a_region_are_exactly_the_overlapping_ones(shape, tile, overlap, data):
    grid = TileGrid.create(shape, tile, overlap, align=2)
    region = []
    for size in shape:
        a = data.draw(st.integers(0, size - 1))
        b = data.draw(st.integers(a + 1, size))
        region.append((a, b))
    region = tuple(region)
    expected = {
        idx
        for idx in grid.all_tiles()
        if all(o < b and o + t > a for o, t, (a, b) in zip(grid.origin(idx), grid.tile, region))
    }
    assert set(grid.tiles_meeting(region)) == expected
    fp = grid.footprint(region)
    for idx in expected:
        for (o0, o1), (f0, f1), size in zip(grid.extent(idx), fp, shape):
            assert f0 <= o0 and min(o1, size) <= f1


def test_grid_depends_only_on_shape_tile_overlap_and_alignment():
    a = TileGrid.create((1000, 777), 256, 0.25, 16)
    b = TileGrid.create((1000, 777), 256, 0.25, 16)
    assert a == b
    assert a.tile == (256, 256) and a.stride == (192, 192)
    assert [a.origin((i, 0))[0] for i in range(a.counts[0])] == [0, 192, 384, 576, 768]


def test_tile_larger_than_scene_becomes_one_padded_tile():
    grid = TileGrid.create((50, 70), 256, 0.5, 16)
    assert grid.counts == (1, 1)
    assert grid.tile == (64, 80)


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_overlap_outside_unit_interval_is_refused(overlap):
    with pytest.raises(ValueError, match="overlap"):
        TileGrid.create((100, 100), 32, overlap)
