"""Blending windows: N-D, positive where they should be, crop windows partition the scene."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.blending import GAUSSIAN_FLOOR, BlendWindow
from pipeline.grid import TileGrid


@given(
    shape=st.lists(st.integers(10, 200), min_size=1, max_size=3).map(tuple),
    tile=st.integers(4, 64),
    overlap=st.floats(0, 0.75),
)
@settings(max_examples=60, deadline=None)
def test_crop_windows_cover_every_pixel_exactly_once(shape, tile, overlap):
    grid = TileGrid.create(shape, tile, overlap, align=2)
    window = BlendWindow(grid, "crop")
    total = np.zeros([n * s + t for n, s, t in zip(grid.counts, grid.stride, grid.tile)], np.float32)
    for idx in grid.all_tiles():
        sl = tuple(slice(a, b) for a, b in grid.extent(idx))
        total[sl] += window.weights(idx)
    inside = total[tuple(slice(0, s) for s in shape)]
    np.testing.assert_array_equal(inside, 1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gaussian_window_is_nd_peaked_and_never_zero(ndim):
    grid = TileGrid.create((100,) * ndim, 32, 0.5)
    w = BlendWindow(grid, "gaussian").weights((1,) * ndim)
    assert w.shape == (32,) * ndim and w.dtype == np.float32
    assert w.min() >= GAUSSIAN_FLOOR**ndim
    centre = tuple(slice(15, 17) for _ in range(ndim))
    assert w[centre].min() == pytest.approx(w.max(), rel=1e-3)


def test_constant_window_is_flat():
    grid = TileGrid.create((64, 64), 16, 0.25)
    assert np.all(BlendWindow(grid, "constant").weights((0, 0)) == 1)


def test_unknown_blend_mode_is_refused():
    with pytest.raises(ValueError, match="blend mode"):
        BlendWindow(TileGrid.create((64, 64), 16, 0.25), "median")
