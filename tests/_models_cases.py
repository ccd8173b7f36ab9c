"""Shared by the models tests: which models they build, and a connectivity probe.

Every registered architecture is built with its registry ``small`` configuration
(same topology, narrow widths), so a model registered later is covered without
editing the tests. A few configuration variants that change the topology
(padding, output stride, backbone) are added on top.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import models
from models.registry import GlobalContext

# Variants whose structure differs from the small canonical configuration.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("unet", {"padding": "same"}),
    ("unet", {"padding": "same", "depth": 2, "batch_norm": True}),
    ("unet3d", {"padding": "same", "depth": 2}),
    ("deeplabv2", {"backbone": "resnet50"}),
    ("deeplabv3", {"output_stride": 8, "backbone": "resnet18", "multi_grid": (1, 2)}),
    ("deeplabv3plus", {"backbone": "resnet50"}),
    ("deeplabv3plus", {"backbone": "mobilenetv2"}),
    ("deeplabv3plus", {"decoder": "dupsampling", "backbone": "resnet18"}),
    ("dilatednet", {"context": "basic"}),
]


def cases() -> list[tuple[str, dict[str, Any]]]:
    """(name, config) for every registered architecture, then the variants."""
    registered = [(name, {}) for name in models.names()]
    return registered + [case for case in VARIANTS if case[0] in models.names()]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, config = case
    return name + "".join(f"-{k}={v}" for k, v in config.items())


def build_small(name: str, **config: Any) -> models.SegmentationModel:
    """``name`` in its small configuration, with ``config`` on top."""
    spec = models.get_spec(name)
    return models.build(name, **{**spec.small, **config})


def connectivity_network(model: nn.Module) -> None:
    """Turn ``model`` into a network whose input gradient is exactly its connectivity.

    The receptive field is a property of which inputs are wired to an output,
    but a gradient measures it badly as is: in narrow random networks, ReLUs and
    max-pool argmaxes switch paths off at random, signed weights may cancel, and
    along a hundred-layer chain the gradient at the edge of the field (one chain
    of corner taps) underflows. So, keeping every connection: pointwise
    nonlinearities become identities, max-poolings average poolings over the
    same windows (a max-unpooling then spreads to its whole window instead of
    the argmax), weights become positive (nothing cancels, and taps an
    identity or zero initialisation left at zero still connect), and after every
    layer the flowing gradient is replaced by its support indicator (nothing
    underflows). Global poolings and :class:`~models.registry.GlobalContext`
    modules (attention, context encoding) are cut (zeroed): the declared reach
    covers the local part of the network.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU | nn.ReLU6):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d) and child.return_indices:
                setattr(module, child_name, _AveragePoolKeepingIndices(child))
            elif isinstance(child, nn.MaxUnpool2d):
                setattr(module, child_name, _SpreadingUnpool(child))
            elif isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
            elif isinstance(child, nn.MaxPool3d):
                setattr(module, child_name, nn.AvgPool3d(child.kernel_size, child.stride, child.padding))
            elif isinstance(child, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d | GlobalContext):
                child.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))  # no gradient either
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(1e-3)  # wiring, not initialisation: zero-initialised taps count too
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd | nn.modules.batchnorm._BatchNorm):
            module.register_full_backward_hook(
                lambda _m, grad_in, _out: tuple(None if g is None else (g != 0).to(g.dtype) for g in grad_in)
            )


def support(grad: torch.Tensor, axis: int) -> torch.Tensor:
    """Indices along ``axis`` (of the spatial axes) where ``grad`` is nonzero."""
    spatial = grad[0].abs().sum(dim=0)  # (channels, *spatial) → spatial
    others = tuple(d for d in range(spatial.ndim) if d != axis)
    profile = spatial.sum(dim=others) if others else spatial
    nonzero = profile.nonzero().flatten()
    assert len(nonzero) > 0, "the gradient vanished everywhere: the measurement could not fail"
    return nonzero


class _AveragePoolKeepingIndices(nn.Module):
    """Average over a max-pooling's windows, still returning its argmax indices (for unpooling)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pool
        with torch.no_grad():
            _, indices = p(x)
        return nn.functional.avg_pool2d(x, p.kernel_size, p.stride, p.padding), indices


class _SpreadingUnpool(nn.Module):
    """Max-unpooling that copies each value to its whole (non-overlapping) window."""

    def __init__(self, unpool: nn.MaxUnpool2d):
        super().__init__()
        self.stride = unpool.stride

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        sy, sx = self.stride
        y = x.repeat_interleave(sy, dim=2).repeat_interleave(sx, dim=3)
        if output_size is not None:
            y = y[..., : output_size[-2], : output_size[-1]]
        return y
