"""A tile that runs past the scene edge is padded in place exactly as the model wrapper pads."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.wrapper import pad_far_side
from pipeline.engine.tile_batches import fill_far_side


@st.composite
def tiles(draw) -> tuple[np.ndarray, tuple[int, ...]]:
    dims = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, 12)) for _ in range(dims))
    have = tuple(draw(st.integers(1, s)) for s in size)
    channels = draw(st.integers(1, 3))
    data = np.random.default_rng(draw(st.integers(0, 999))).random((channels, *have)).astype(np.float32)
    return data, size


@settings(max_examples=200, deadline=None)
@given(case=tiles())
def test_filling_the_far_side_in_place_equals_the_wrappers_padding(case):
    data, size = case
    tile = np.full((data.shape[0], *size), np.nan, np.float32)  # a reused buffer's stale values
    tile[(slice(None), *(slice(0, n) for n in data.shape[1:]))] = data
    fill_far_side(tile, data.shape[1:])
    np.testing.assert_array_equal(tile, pad_far_side(torch.from_numpy(data)[None], size)[0].numpy())
