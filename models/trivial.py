"""A 1×1 convolution: the I/O-bound reference model for benchmarks and smoke tests.

It sees one pixel, downsamples nothing and costs almost nothing, so a run with it
measures the pipeline (read, normalise, blend, write) rather than the network.

With one input channel (a panchromatic band, a CT or MRI volume) the map is a
single fused multiply-add rather than a convolution: PyTorch's CPU convolution has
no fast path for one input channel and runs a 1×1 kernel over it ~7× slower
(160–220 ms against 17–24 ms per 8×512² batch on the 2-core CI machine), which
would make the "I/O-bound" model the slowest step of the pipeline. With several
channels the convolution kernels are the fast path and are used. Parameter names
and shapes are a ``Conv2d``'s / ``Conv3d``'s (``weight`` (out, in, 1, 1[, 1]),
``bias`` (out,)), so a state dict moves between the two unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.registry import ArchSpec, register


class PointwiseLinear(nn.Module):
    """``out[:, o] = Σ_c weight[o, c] · x[:, c] + bias[o]`` at every pixel / voxel."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *(1,) * spatial_dims))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # The default initialisation of nn.ConvNd, so training starts where a conv would.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_channels)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[1] == 1:
            shape = (1, self.weight.shape[0]) + (1,) * self.spatial_dims
            return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        return conv(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        out_channels, in_channels = self.weight.shape[:2]
        return f"{in_channels=}, {out_channels=}, spatial_dims={self.spatial_dims}"


def _conv1x1(in_channels: int, num_classes: int, spatial_dims: int = 2) -> nn.Module:
    return PointwiseLinear(in_channels, num_classes, spatial_dims)


register(
    ArchSpec(
        name="conv1x1",
        family="reference",
        factory=lambda in_channels, num_classes: _conv1x1(in_channels, num_classes, 2),
        spatial_dims=2,
        downsampling=1,
        reach=0,
        default_tile=512,
        paper="(none: a per-pixel linear classifier for benchmarks)",
        defaults={"in_channels": 3, "num_classes": 2},
    )
)

register(
    ArchSpec(
        name="conv1x1_3d",
        family="reference",
        factory=lambda in_channels, num_classes: _conv1x1(in_channels, num_classes, 3),
        spatial_dims=3,
        downsampling=1,
        reach=0,
        default_tile=64,
        paper="(none: a per-voxel linear classifier for benchmarks)",
        defaults={"in_channels": 1, "num_classes": 2},
    )
)
