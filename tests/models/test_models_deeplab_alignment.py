"""DeepLab's logits line up with the input pixels they label.

Features at stride s are centred over input pixel s·i (every strided layer is
centred), and the aligned upsampling keeps them there; a naive bilinear
upsampling would shift the logits by (s - 1) / 2 pixels.
"""

from __future__ import annotations

import pytest
import torch
from _models_cases import build_small, case_id, cases, connectivity_network, support

from models.deeplab import upsample_aligned


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_upsampling_keeps_each_feature_over_its_pixel(factor):
    x = torch.randn(2, 3, 5, 7)
    y = upsample_aligned(x, factor)
    assert y.shape == (2, 3, 5 * factor, 7 * factor)
    torch.testing.assert_close(y[..., ::factor, ::factor], x)
    # Halfway between two features: their mean.
    half = factor // 2
    torch.testing.assert_close(y[..., 0, half : 6 * factor : factor], (x[..., 0, :-1] + x[..., 0, 1:]) / 2)


DEEPLABS = [case for case in cases() if case[0].startswith("deeplab")]


@pytest.mark.parametrize("case", DEEPLABS, ids=case_id)
def test_output_over_a_feature_centre_sees_symmetrically(case):
    """The logit at a multiple of the stride depends on inputs equally far on both sides."""
    name, config = case
    torch.manual_seed(0)
    model = build_small(name, **config).eval()
    connectivity_network(model)
    f, reach = model.downsampling, model.reach
    length = -(-(2 * reach + 4 * f) // f) * f
    x = torch.randn(1, model.in_channels, f, length, requires_grad=True)
    centre = length // 2 // f * f
    (g,) = torch.autograd.grad(model(x)[0, :, 0, centre].sum(), x)
    seen = support(g, 1)
    assert centre - seen.min().item() == seen.max().item() - centre
