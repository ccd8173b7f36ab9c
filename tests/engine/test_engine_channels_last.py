"""The engine runs models channels-last by default: same probabilities up to rounding, same labels."""

from __future__ import annotations

import pytest
import torch

from models import build
from pipeline.engine.predictor import TilePredictor


@pytest.mark.parametrize(
    ("arch", "config", "shape", "layout"),
    [
        ("unet", {"width": 8, "depth": 2}, (3, 2, 64, 64), torch.channels_last),
        ("unet3d", {"width": 4, "depth": 2}, (2, 1, 16, 32, 32), torch.channels_last_3d),
    ],
)
def test_channels_last_matches_the_model_own_layout(arch, config, shape, layout):
    torch.manual_seed(0)
    plain = build(arch, in_channels=shape[1], num_classes=3, **config).eval()
    fast = build(arch, in_channels=shape[1], num_classes=3, **config).eval()
    fast.load_state_dict(plain.state_dict())
    tiles = torch.randn(shape)

    reference = TilePredictor(plain, torch.device("cpu"), channels_last=False)(tiles)
    predictor = TilePredictor(fast, torch.device("cpu"))
    probs = predictor(tiles)

    conv_weights = [p for p in fast.parameters() if p.ndim == len(shape)]
    assert conv_weights and all(w.is_contiguous(memory_format=layout) for w in conv_weights)
    assert probs.is_contiguous()  # blending slices class planes of a plain layout
    torch.testing.assert_close(probs, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(probs.argmax(1), reference.argmax(1))
    assert torch.equal(predictor(tiles), probs)  # reruns give the same bits
