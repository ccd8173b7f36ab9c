"""A 1×1 convolution: the I/O-bound reference model for benchmarks and smoke tests.

It sees one pixel, downsamples nothing and costs almost nothing, so a run with it
measures the pipeline (read, normalise, blend, write) rather than the network.
"""

from __future__ import annotations

from torch import nn

from models.registry import ArchSpec, register


def _conv1x1(in_channels: int, num_classes: int, spatial_dims: int = 2) -> nn.Module:
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(in_channels, num_classes, kernel_size=1)


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
