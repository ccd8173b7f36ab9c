"""Blocks are independent and exact: a blockwise run equals one in-memory pass of the same grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import build
from models.registry import ArchSpec
from models.wrapper import SegmentationModel
from pipeline.engine.block import infer_block
from pipeline.engine.in_memory import predict_in_memory
from pipeline.engine.predictor import TilePredictor
from pipeline.inputs.normalization import normalizer_for
from pipeline.stores.labels import label_nodata
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import TileGrid

UNNORMALISED = normalizer_for(None)


def _tiny_3d_model() -> SegmentationModel:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=2),
        nn.Conv3d(4, 3, 3, padding=1),
    )
    spec = ArchSpec("tiny3d", "test", lambda **_: net, 3, 2, 10, 16, "test")
    return SegmentationModel(net, spec, {"in_channels": 1, "num_classes": 3}).eval()


def _run_blockwise(image, valid, grid, window, predictor, block, chunk, classes):
    plan = BlockPlan.create(grid, block, chunk)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    probs = np.zeros((classes, *grid.shape), dtype=np.float32)

    def read(region):
        sl = tuple(slice(a, b) for a, b in region)
        return image[(slice(None), *sl)], valid[sl]

    for block_ in reversed(list(plan)):  # order must not matter
        out = infer_block(read, block_, grid, window, predictor, UNNORMALISED, classes, True)
        sl = tuple(slice(a, b) for a, b in block_.region)
        labels[sl] = out.labels
        probs[(slice(None), *sl)] = out.probabilities
    return labels, probs, plan.num_blocks


@pytest.mark.parametrize("blend", ["gaussian", "crop", "constant"])
def test_2d_blockwise_equals_whole_scene_for_every_block_size(blend):
    torch.manual_seed(0)
    model = build("unet", in_channels=3, num_classes=4, width=4, depth=2).eval()
    rng = np.random.default_rng(0)
    image = rng.random((3, 203, 171)).astype(np.float32)
    valid = np.ones((203, 171), dtype=bool)
    valid[:30, :45] = False
    valid[100:104, :] = False
    grid = TileGrid.create((203, 171), 48, 0.3, align=model.downsampling)
    window = BlendWindow(grid, blend)
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=3)
    ref = predict_in_memory(image, valid, grid, window, predictor, UNNORMALISED, 4)
    nodata = label_nodata(4)
    assert (ref.labels[~valid] == nodata).all() and (ref.labels[valid] != nodata).all()
    counts = set()
    for block in (16, 48, 80, 256):  # 16: blocks of one chunk
        labels, probs, n = _run_blockwise(image, valid, grid, window, predictor, block, 16, 4)
        counts.add(n)
        np.testing.assert_array_equal(labels, ref.labels)
        np.testing.assert_allclose(probs, ref.probabilities, atol=1e-5, equal_nan=True)
    assert len(counts) == 4 and max(counts) > 100


def test_3d_blockwise_equals_whole_volume():
    model = _tiny_3d_model()
    rng = np.random.default_rng(1)
    shape = (37, 30, 41)
    image = rng.random((1, *shape)).astype(np.float32)
    valid = np.ones(shape, dtype=bool)
    valid[:5] = False
    grid = TileGrid.create(shape, 16, 0.25, align=2)
    window = BlendWindow(grid, "gaussian")
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=4)
    ref = predict_in_memory(image, valid, grid, window, predictor, UNNORMALISED, 3)
    for block in (16, 32):
        labels, probs, _ = _run_blockwise(image, valid, grid, window, predictor, block, 16, 3)
        np.testing.assert_array_equal(labels, ref.labels)
        np.testing.assert_allclose(probs, ref.probabilities, atol=1e-5, equal_nan=True)


def test_rerun_is_bit_identical():
    torch.manual_seed(0)
    model = build("unet", in_channels=3, num_classes=4, width=4, depth=2).eval()
    image = np.random.default_rng(2).random((3, 90, 70)).astype(np.float32)
    valid = np.ones((90, 70), dtype=bool)
    grid = TileGrid.create((90, 70), 32, 0.25, align=4)
    window = BlendWindow(grid, "gaussian")
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=2)
    a = _run_blockwise(image, valid, grid, window, predictor, 32, 16, 4)
    b = _run_blockwise(image, valid, grid, window, predictor, 32, 16, 4)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def test_nodata_pixels_do_not_pollute_their_neighbours():
    """Changing values under nodata must not change any valid output pixel."""
    torch.manual_seed(0)
    model = build("unet", in_channels=3, num_classes=4, width=4, depth=2).eval()
    rng = np.random.default_rng(5)
    image = rng.random((3, 64, 64)).astype(np.float32)
    valid = np.ones((64, 64), dtype=bool)
    valid[20:30, 20:30] = False
    grid = TileGrid.create((64, 64), 32, 0.5, align=4)
    window = BlendWindow(grid, "gaussian")
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=4)
    a = predict_in_memory(image, valid, grid, window, predictor, UNNORMALISED, 4)
    garbage = image.copy()
    garbage[:, ~valid] = -99999.0
    b = predict_in_memory(garbage, valid, grid, window, predictor, UNNORMALISED, 4)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("nodata", [True, False])
def test_streamed_rows_equal_the_whole_context_bit_for_bit(batch_size, dims, nodata):
    """A block blended row range by row range (finished as the tiles pass) is the full-context blend.

    Batches that span several tile rows make the kept rows outnumber the finished ones, so
    the accumulator's rows move to the front in pieces; without nodata the mask is a
    broadcast constant, as a scene store reads it.
    """
    if dims == 2:
        torch.manual_seed(0)
        model = build("unet", in_channels=3, num_classes=4, width=4, depth=2).eval()
        shape, tile, classes = (150, 97), 32, 4
    else:
        model, shape, tile, classes = _tiny_3d_model(), (29, 22, 26), 12, 3
    rng = np.random.default_rng(5)
    image = rng.random((model.net[0].in_channels if dims == 3 else 3, *shape)).astype(np.float32)
    valid = rng.random(shape) > 0.05 if nodata else np.broadcast_to(np.True_, shape)
    grid = TileGrid.create(shape, tile, 0.3, align=model.downsampling)
    window = BlendWindow(grid, "gaussian")
    predictor = TilePredictor(model, torch.device("cpu"), batch_size=batch_size)
    whole = predict_in_memory(image, valid, grid, window, predictor, UNNORMALISED, classes)
    [block] = list(BlockPlan.create(grid, max(shape), 16))

    def read(region):
        sl = tuple(slice(a, b) for a, b in region)
        return image[(slice(None), *sl)], valid[sl]

    streamed = infer_block(
        read, block, grid, window, predictor, UNNORMALISED, classes, True, with_uncertainty=True
    )
    assert streamed.probabilities.tobytes() == whole.probabilities.tobytes()
    assert streamed.labels.tobytes() == whole.labels.tobytes()
    np.testing.assert_array_equal(streamed.label_stats[:, 0], whole.label_stats[:, 0])
    # float32 partial sums per row range: equal to rounding
    np.testing.assert_allclose(streamed.label_stats[:, 1], whole.label_stats[:, 1], rtol=1e-6)
    assert np.isnan(streamed.confidence[~valid]).all() and (streamed.confidence[valid] > 0).all()
