"""The registry's geometry is true: names, downsampling factor and receptive-field reach.

The engine trusts these numbers: it aligns tiles to the downsampling factor and
sizes block halos from the reach. Each is checked against the network itself.
"""

from __future__ import annotations

import pytest
import torch
from _models_cases import build_small, case_id, cases, connectivity_network, support
from torch import nn

import models
from models.registry import GlobalContext

CASES = cases()
PHASES_PER_PASS = 32
REQUIRED = [
    "unet",
    "unet3d",
    "fcdensenet56",
    "fcdensenet67",
    "fcdensenet103",
    "deeplabv1",
    "deeplabv2",
    "deeplabv3",
    "deeplabv3plus",
]


def test_required_architectures_are_registered():
    assert set(REQUIRED) <= set(models.names())


@pytest.mark.parametrize("name", models.names())
def test_spec_declares_what_the_engine_needs(name):
    spec = models.get_spec(name)
    model = build_small(name)
    assert spec.paper and spec.family
    assert model.spatial_dims == spec.spatial_dims
    assert model.downsampling >= 1 and model.reach >= 0
    canonical = spec.resolve_config()
    assert spec.default_tile % spec.downsampling_for(canonical) == 0
    assert {"in_channels", "num_classes"} <= set(spec.defaults)
    assert set(spec.small) <= set(spec.defaults), "small config keys must be known keys"
    has_global_pooling = any(
        isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d | GlobalContext) for m in model.modules()
    )
    assert spec.fully_convolutional == (not has_global_pooling)
    if not spec.fully_convolutional:
        assert "pooling" in spec.notes


def _coarsest_extent(model: models.SegmentationModel, x: torch.Tensor) -> int:
    """Smallest last-axis extent among the network's internal maps (global/pyramid poolings excluded)."""
    extents: list[int] = []
    dims = model.spatial_dims

    def hook(_module, _inputs, output):
        if isinstance(output, tuple) and output:  # (pooled, indices) of an index-keeping pooling
            output = output[0]
        if isinstance(output, torch.Tensor) and output.ndim == dims + 2:
            spatial = output.shape[2:]
            if any(s > 1 for s in spatial):  # a globally pooled 1×1 map is not a grid level
                extents.append(int(spatial[-1]))

    # Pyramid / image pooling branches (an adaptive pooling and what follows it) give fixed-size bins.
    pooled: set[int] = set()
    for parent in model.net.modules():
        if any(isinstance(c, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d) for c in parent.children()):
            pooled.update(id(m) for m in parent.modules())
    handles = [
        m.register_forward_hook(hook)
        for m in model.net.modules()
        if m is not model.net and id(m) not in pooled
    ]
    try:
        with torch.no_grad():
            model.net(x)
    finally:
        for h in handles:
            h.remove()
    return min(extents) if extents else x.shape[-1]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_downsampling_factor_is_the_real_one(case):
    """The bare network takes multiples of the factor, and its coarsest grid has that stride."""
    name, config = case
    model = build_small(name, **config).eval()
    f, dims = model.downsampling, model.spatial_dims
    for k in (1, 2, 3):
        size = (f,) * (dims - 1) + (k * f,)
        with torch.no_grad():
            y = model.net(torch.randn(1, model.in_channels, *size))
        assert tuple(y.shape[2:]) == size, f"bare {name} at {size} gave {tuple(y.shape)}"
    if f > 1:
        coarse = [
            _coarsest_extent(model, torch.randn(1, model.in_channels, *(f,) * (dims - 1), k * f))
            for k in (2, 4)
        ]
        # Two more coarsest-grid cells for 2·f more input pixels: the total stride is exactly f.
        assert coarse[1] - coarse[0] == 2, f"{name}: coarsest extents {coarse} for inputs 2f, 4f"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_shifting_the_input_by_the_factor_shifts_the_logits(case):
    """Away from the borders, the network commutes with shifts by its downsampling factor.

    The engine places tiles on a grid aligned to the factor and blends their
    overlaps, so two tiles must agree on the pixels they share. Global image
    pooling breaks this by design; it is switched off where the model allows.
    """
    name, config = case
    spec = models.get_spec(name)
    if not spec.fully_convolutional:
        if "image_pooling" not in spec.defaults:
            pytest.skip(f"{name} is declared not fully convolutional")
        config = {**config, "image_pooling": False}
    torch.manual_seed(0)
    model = build_small(name, **config).eval()
    f, reach, dims = model.downsampling, model.reach, model.spatial_dims
    length = -(-(2 * reach + 3 * f) // f) * f
    x = torch.randn(1, model.in_channels, *(f,) * (dims - 1), length + f)
    with torch.no_grad():
        a = model(x[..., :length])
        b = model(x[..., f:])
    interior = slice(reach, length - f - reach)
    shifted = slice(reach + f, length - reach)
    assert interior.stop > interior.start
    torch.testing.assert_close(b[..., interior], a[..., shifted], rtol=1e-4, atol=1e-4)


def _reach_axes(dims: int) -> list[int]:
    """Spatial axes to measure along: the last (X); for 3D the first (Z), which only 3D has."""
    return [dims - 1] if dims == 2 else [0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_declared_reach_bounds_the_receptive_field(case):
    """The gradient of any single output pixel is zero farther than ``reach`` from it.

    The input is long along one axis (twice the declared reach plus a stride on
    each side, so an understatement shows) and one downsampling step thin along
    the others.
    One output pixel per phase of the stride is measured (the network commutes
    with shifts by the stride, so that covers every pixel), each phase in its
    own batch item so that one backward pass measures several, on the connectivity
    network of :func:`connectivity_network`. The declared reach must bound
    what every phase sees and be tight: less than one stride more than what the
    farthest-seeing phase sees.
    """
    name, config = case
    torch.manual_seed(0)
    model = build_small(name, **config).eval()
    connectivity_network(model)
    f, reach, dims = model.downsampling, model.reach, model.spatial_dims
    # One stride beyond the reach on either side: a pixel seen farther than declared shows as
    # seen at least one pixel beyond it (or up to the border), so an understatement cannot hide.
    length = -(-(2 * (reach + f) + f) // f) * f
    start = length // 2 // f * f
    farthest = 0
    for axis in _reach_axes(dims):
        shape = [f] * dims
        shape[axis] = length
        # One batch item per phase (eval mode: items are independent), a few phases per pass.
        for first in range(0, f, PHASES_PER_PASS):
            phases = range(first, min(f, first + PHASES_PER_PASS))
            x = torch.randn(1, model.in_channels, *shape).expand(len(phases), *[-1] * (dims + 1))
            x = x.clone().requires_grad_(True)
            y = model(x)
            picked = []
            for item, offset in enumerate(phases):
                index = [0] * dims
                index[axis] = start + offset
                picked.append(y[(item, slice(None), *index)].sum())
            (g,) = torch.autograd.grad(torch.stack(picked).sum(), x)
            for item, offset in enumerate(phases):
                seen = support(g[item : item + 1], axis)
                centre = start + offset
                behind, ahead = centre - seen.min().item(), seen.max().item() - centre
                assert max(behind, ahead) <= reach, (
                    f"{name}: output at phase {offset} sees {behind} back, {ahead} ahead; "
                    f"declared reach {reach}"
                )
                farthest = max(farthest, behind, ahead)
    assert reach - farthest < f, f"{name}: declared reach {reach}, farthest seen {farthest}"
