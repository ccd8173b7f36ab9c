"""The blending bench's seam lines are where the engine's crop window really switches tiles."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.blend_bench import kept_edges, seam_contrast
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.grid import TileGrid


@given(size=st.integers(40, 400), tile=st.integers(8, 64), overlap=st.sampled_from([0.0, 0.125, 0.25, 0.5]))
@settings(max_examples=80, deadline=None)
def test_kept_edges_are_where_crop_changes_the_owning_tile(size, tile, overlap):
    grid = TileGrid.create((size,), tile, overlap, align=1)
    window = BlendWindow(grid, "crop")
    owner = np.full(size, -1)
    t, s = grid.tile[0], grid.stride[0]
    for i in range(grid.counts[0]):
        kept = np.flatnonzero(window.axis_profile(0, i)) + i * s
        owner[kept[kept < size]] = i
    assert (owner >= 0).all()
    switches = np.flatnonzero(np.diff(owner)) + 1
    assert switches.tolist() == kept_edges(window).tolist()
    # half the overlap dropped on each side: the switch is in the middle of every overlap
    middles = [i * s + (t - s) // 2 for i in range(1, grid.counts[0]) if i * s + (t - s) // 2 < size]
    assert switches.tolist() == middles


def test_seam_contrast_sees_a_step_and_not_a_smooth_image():
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    smooth = np.stack([xx * yy, 1 - xx * yy])
    lines = np.array([64, 128, 192])
    assert abs(seam_contrast(smooth, lines, frame=16) - 1.0) < 0.05
    stepped = smooth.copy()
    stepped[:, :, 128:] += 0.05  # a tile edge that shows
    assert seam_contrast(stepped, lines, frame=16) > 2
