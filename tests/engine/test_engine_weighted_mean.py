"""The blend is the weighted mean of every tile's softmax, whatever the batching.

The engine cuts tiles into one reused input buffer and writes every batch's
probabilities into one reused output buffer; these tests recompute the blend
tile by tile in plain numpy, so a batch that read or kept another batch's data
would show.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import build
from pipeline.engine.accumulation import blend_region
from pipeline.engine.predictor import TilePredictor
from pipeline.engine.tile_batches import Footprint
from pipeline.inputs.normalization import normalizer_for
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.grid import TileGrid

UNNORMALISED = normalizer_for(None)


def _tile_by_tile(model, image, valid, grid, window) -> np.ndarray:
    """Σ w·softmax / Σ w over the tiles, one tile at a time, edge tiles reflect-padded."""
    acc = np.zeros((model.num_classes, *grid.shape), np.float64)
    weight = np.zeros(grid.shape, np.float64)
    for idx in grid.all_tiles():
        (r0, r1), (c0, c1) = grid.extent(idx)
        h, w = min(r1, grid.shape[0]) - r0, min(c1, grid.shape[1]) - c0
        x = np.where(valid[r0 : r0 + h, c0 : c0 + w], image[:, r0 : r0 + h, c0 : c0 + w], 0.0)
        pad = ((0, 0), (0, grid.tile[0] - h), (0, grid.tile[1] - w))
        mode = "reflect" if grid.tile[0] - h < h and grid.tile[1] - w < w else "edge"
        x = np.pad(x, pad, mode=mode).astype(np.float32)
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0].double().numpy()
        wt = np.asarray(window.weights(idx), np.float64)[:h, :w]
        acc[:, r0 : r0 + h, c0 : c0 + w] += p[:, :h, :w] * wt
        weight[r0 : r0 + h, c0 : c0 + w] += wt * valid[r0 : r0 + h, c0 : c0 + w]
    return np.where(weight > 0, acc / np.where(weight > 0, weight, 1.0), 0.0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(20, 90),
    width=st.integers(20, 90),
    batch_size=st.integers(1, 9),
    blend=st.sampled_from(["gaussian", "crop", "constant"]),
    channels_last=st.booleans(),
)
def test_blend_equals_the_weighted_mean_of_each_tiles_softmax(
    height, width, batch_size, blend, channels_last
):
    torch.manual_seed(1)
    model = build("unet", in_channels=2, num_classes=3, width=4, depth=2).eval()
    rng = np.random.default_rng(height * 100 + width)
    image = rng.random((2, height, width)).astype(np.float32)
    valid = np.ones((height, width), dtype=bool)
    valid[: height // 4, : width // 3] = False
    grid = TileGrid.create((height, width), 16, 0.25, align=model.downsampling)
    window = BlendWindow(grid, blend)
    scene = ((0, height), (0, width))
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=batch_size, channels_last=channels_last)

    result = blend_region(Footprint(image, valid, scene, UNNORMALISED), scene, grid, window, predictor)

    assert result is not None
    expected = _tile_by_tile(model, image, valid, grid, window)
    np.testing.assert_allclose(result.probabilities.numpy(), expected, atol=2e-5)
    np.testing.assert_array_equal(result.covered.numpy(), valid)


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_predictor_writes_into_the_buffer_it_is_given(tta, channels_last):
    torch.manual_seed(0)
    model = build("unet", in_channels=1, num_classes=3, width=4, depth=2).eval()
    predictor = TilePredictor(model, torch.device("cpu"), tta=tta, channels_last=channels_last)
    tiles = torch.randn(5, 1, 32, 32)
    fresh = predictor(tiles)
    buffer = torch.full((5, 3, 32, 32), float("nan"))

    written = predictor(tiles, out=buffer)

    assert written.data_ptr() == buffer.data_ptr() and written.is_contiguous()
    assert torch.equal(written, fresh)
