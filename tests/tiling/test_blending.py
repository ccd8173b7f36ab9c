"""Blending windows: N-D, positive where they should be, crop windows partition the scene."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tiling.blending import BLEND_MODES, GAUSSIAN_FLOOR, BlendWindow, resolve_blend
from pipeline.tiling.grid import TileGrid


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


@pytest.mark.parametrize("fully_convolutional", [True, False])
def test_auto_blend_is_crop_only_for_fully_convolutional_models(fully_convolutional):
    assert resolve_blend("auto", fully_convolutional) == ("crop" if fully_convolutional else "gaussian")
    for mode in BLEND_MODES:
        assert resolve_blend(mode, fully_convolutional) == mode
    with pytest.raises(ValueError, match="auto, constant, gaussian, crop"):
        resolve_blend("median", fully_convolutional)


def test_unknown_blend_mode_is_refused():
    with pytest.raises(ValueError, match="blend mode"):
        BlendWindow(TileGrid.create((64, 64), 16, 0.25), "median")


@given(
    shape=st.lists(st.integers(10, 120), min_size=1, max_size=3).map(tuple),
    tile=st.integers(4, 40),
    overlap=st.floats(0, 0.75),
    mode=st.sampled_from(["constant", "gaussian", "crop"]),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_separable_coverage_equals_the_sum_of_tile_windows(shape, tile, overlap, mode, data):
    grid = TileGrid.create(shape, tile, overlap)
    window = BlendWindow(grid, mode)
    region = tuple(
        (a, data.draw(st.integers(a + 1, s))) for s in shape for a in [data.draw(st.integers(0, s - 1))]
    )
    total = np.zeros([b - a for a, b in region], np.float64)
    for idx in grid.tiles_meeting(region):
        ext = grid.extent(idx)
        part = tuple((max(a, e0), min(b, e1)) for (a, b), (e0, e1) in zip(region, ext))
        w = window.weights(idx)[tuple(slice(p0 - e0, p1 - e0) for (p0, p1), (e0, _) in zip(part, ext))]
        total[tuple(slice(p0 - a, p1 - a) for (p0, p1), (a, _) in zip(part, region))] += w
    coverage = np.ones((), np.float64)
    for profile in window.coverage(region):
        coverage = np.multiply.outer(coverage, profile)
    np.testing.assert_allclose(coverage, total, rtol=1e-5)
