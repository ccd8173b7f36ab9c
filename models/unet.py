"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

A contracting path of double 3×3 convolutions and 2×2 max-poolings, an expanding
path of 2×2 up-convolutions, skip concatenations, and a 1×1 classifier.
``padding="same"`` keeps sizes (the variant used for tiled inference);
``width`` scales every level's channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.registry import ArchSpec, register


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by (optional) batch norm and ReLU."""

    def __init__(self, cin: int, cout: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (cin, cout):
            layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """Same-padded U-Net with ``depth`` poolings and ``width`` base channels."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 4,
        batch_norm: bool = False,
    ):
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(DoubleConv(cin, c, batch_norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_hi, c_lo in zip(reversed(chans[1:]), reversed(chans[:-1])):
            self.up.append(nn.ConvTranspose2d(c_hi, c_lo, 2, stride=2))
            self.merge.append(DoubleConv(2 * c_lo, c_lo, batch_norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def _reach(config: Mapping[str, Any]) -> int:
    # Per level l (scale 2**l): two encoder convs, the pool, the up-conv and two
    # decoder convs each add at most 2**l pixels a side; the bottleneck's two convs 2**depth.
    depth = int(config["depth"])
    return 6 * (2**depth - 1) + 2 * 2**depth


register(
    ArchSpec(
        name="unet",
        family="U-Net",
        factory=UNet,
        spatial_dims=2,
        downsampling=lambda c: 2 ** int(c["depth"]),
        reach=_reach,
        default_tile=256,
        paper="Ronneberger et al., U-Net, MICCAI 2015",
        defaults={
            "in_channels": 1,
            "num_classes": 2,
            "width": 64,
            "depth": 4,
            "batch_norm": False,
        },
    )
)
