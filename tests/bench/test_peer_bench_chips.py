"""The peer bench's chip-prediction peers: every pixel written once, from the right part of a chip."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.peers.chips import chips_average, chips_crop


def _blank_rim(crop: int):
    """A 'model' that returns its tile with the outer ``crop`` px set to NaN (what cropping must drop)."""

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        out = tiles.clone()
        if crop:
            out[..., :crop, :] = out[..., -crop:, :] = np.nan
            out[..., :, :crop] = out[..., :, -crop:] = np.nan
        return out

    return predict


@given(
    h=st.integers(32, 200),  # at least one chip wide
    w=st.integers(32, 200),
    tile=st.sampled_from([8, 16, 32]),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
    batch=st.integers(1, 5),
)
@settings(max_examples=60, deadline=None)
def test_crop_keeps_each_chips_centre_and_covers_the_scene(h, w, tile, overlap, batch):
    stride = tile - round(tile * overlap)
    crop = (tile - stride) // 2
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
    out = chips_crop(x, _blank_rim(crop), tile, stride, batch, classes=1)
    inner = out[:, crop : h - crop, crop : w - crop]
    # away from the scene's edge every pixel comes from a chip's kept centre: exact, never the rim
    assert torch.equal(inner, x[:, crop : h - crop, crop : w - crop])
    # at the scene's edge the chips keep their outer rim (a scene edge is not a seam)
    if crop:
        for rim in (out[:, :crop], out[:, -crop:], out[:, :, :crop], out[:, :, -crop:]):
            assert torch.isnan(rim).all()


@given(h=st.integers(32, 120), w=st.integers(32, 120), batch=st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_averaging_an_exact_model_is_exact(h, w, batch):
    x = torch.rand((1, h, w))
    out = chips_average(x, lambda t: t.clone(), 32, 24, batch, classes=1)
    assert torch.allclose(out, x, atol=1e-6)
