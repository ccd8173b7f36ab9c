"""The engine over an in-memory array equals the whole-scene pass, nodata included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build
from pipeline.engine.in_memory import predict_in_memory, segment_array
from pipeline.engine.predictor import TilePredictor
from pipeline.inputs.normalization import normalizer_for
from pipeline.stores.labels import label_nodata
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.grid import TileGrid


@pytest.mark.parametrize("blend", ["gaussian", "crop"])
def test_segment_array_equals_whole_scene_pass(blend):
    torch.manual_seed(1)
    model = build("unet", in_channels=2, num_classes=3, width=4, depth=2, padding="same").eval()
    rng = np.random.default_rng(1)
    image = rng.random((2, 150, 133)).astype(np.float32)
    valid = np.ones(image.shape[1:], dtype=bool)
    valid[40:60, 10:30] = False
    out = segment_array(image, model, 32, 0.25, blend, valid=valid, block=48, with_probabilities=True)

    grid = TileGrid.create(image.shape[1:], 32, 0.25, align=model.downsampling)
    ref = predict_in_memory(
        image.copy(), valid, grid, BlendWindow(grid, blend), TilePredictor(model, torch.device("cpu")),
        normalizer_for(None), 3,
    )  # fmt: skip
    np.testing.assert_array_equal(out.labels, ref.labels)
    np.testing.assert_allclose(out.probabilities, ref.probabilities, atol=1e-5)
    assert (out.labels[~valid] == label_nodata(3)).all() and np.isnan(out.probabilities[:, ~valid]).all()
    assert out.tiles_run >= grid.num_tiles


def test_segment_array_refuses_a_mask_of_another_shape():
    model = build("conv1x1", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="valid mask shape"):
        segment_array(np.zeros((1, 8, 8), np.uint8), model, 8, valid=np.ones((8, 9), bool))
