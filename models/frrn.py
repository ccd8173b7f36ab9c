"""FRRN (Pohlen, Hermans, Mathias & Leibe, Full-Resolution Residual Networks for Semantic
Segmentation in Street Scenes, CVPR 2017), variant FRRN B.

Two streams: a *residual stream* at full resolution (32 channels) that only
ever receives additions, and a *pooling stream* that goes down and up like an
encoder-decoder. They are coupled by *full-resolution residual units* (FRRU)
at scale ``s``: the residual stream is max-pooled by ``s`` and concatenated
with the pooling stream; two 3×3 convolutions (batch norm, ReLU) give the new
pooling stream; a 1×1 convolution of it (to 32 channels), upsampled by ``s``
(nearest), is added to the residual stream.

FRRN B (Table 1 of the paper): a 5×5 convolution to 48 channels (batch norm,
ReLU) and three residual units (RU: two 3×3 convolutions with batch norm, plus
the input); the residual stream splits off by a 1×1 convolution to 32. Encoder
(each stage starts with 2×2 max pooling of the pooling stream): 3 FRRU 96
(scale 2), 4 FRRU 192 (4), 2 FRRU 384 (8), 2 FRRU 384 (16), 2 FRRU 384 (32).
Decoder (each stage starts with ×2 unpooling): 2 FRRU 192 (16), 2 FRRU 192
(8), 2 FRRU 192 (4), 2 FRRU 96 (2); a last unpooling to full resolution. The
streams are concatenated, a 1×1 convolution brings them to 48 channels, three
RUs and a 1×1 classifier follow.

Canonical: 3 channels in, 19 classes (Cityscapes); the paper states no
parameter count in its text. Unpooling is nearest-neighbour upsampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Pohlen et al., Full-Resolution Residual Networks for Semantic Segmentation (FRRN), CVPR 2017"

# (scale, units, channels) of the pooling stream, encoder then decoder: FRRN B.
FRRN_B: tuple[tuple[int, int, int], ...] = (
    (2, 3, 96),
    (4, 4, 192),
    (8, 2, 384),
    (16, 2, 384),
    (32, 2, 384),
    (16, 2, 192),
    (8, 2, 192),
    (4, 2, 192),
    (2, 2, 96),
)


def conv_bn(cin: int, cout: int, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualUnit(nn.Module):
    """RU: 3×3 conv + BN + ReLU, 3×3 conv + BN, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def unpool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by ``factor``."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


class FRRU(nn.Module):
    """Full-resolution residual unit at ``scale``: returns the new pooling and residual streams."""

    def __init__(self, cin: int, cout: int, residual: int, scale: int):
        super().__init__()
        self.scale = scale
        self.pool = nn.MaxPool2d(scale, scale)
        self.convs = nn.Sequential(conv_bn(cin + residual, cout), conv_bn(cout, cout))
        self.to_residual = nn.Conv2d(cout, residual, 1)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.convs(torch.cat([y, self.pool(z)], dim=1))
        return y, z + unpool(self.to_residual(y), self.scale)


class FRRN(nn.Module):
    """Full-resolution residual stream + pooling stream coupled by FRRUs (FRRN B by default)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stages: Sequence[Sequence[int]] = FRRN_B,
        stem_channels: int = 48,
        residual_channels: int = 32,
        width_mult: float = 1.0,
    ):
        super().__init__()
        scale = lambda c: max(1, round(int(c) * width_mult))  # noqa: E731
        stem, res = scale(stem_channels), scale(residual_channels)
        self.stem = nn.Sequential(conv_bn(in_channels, stem, 5), *(ResidualUnit(stem) for _ in range(3)))
        self.split = nn.Conv2d(stem, res, 1)
        self.scales = [int(s) for s, _, _ in stages]
        self.stages = nn.ModuleList()
        cin = stem
        for s, units, channels in stages:
            blocks = []
            for _ in range(int(units)):
                blocks.append(FRRU(cin, scale(channels), res, int(s)))
                cin = scale(channels)
            self.stages.append(nn.ModuleList(blocks))
        self.pool = nn.MaxPool2d(2, 2)
        self.merge = nn.Conv2d(cin + res, stem, 1)
        self.head = nn.Sequential(*(ResidualUnit(stem) for _ in range(3)), nn.Conv2d(stem, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.split(y)
        current = 1
        for s, blocks in zip(self.scales, self.stages):
            y = self.pool(y) if s > current else unpool(y, current // s)
            current = s
            for frru in blocks:
                y, z = frru(y, z)
        y = unpool(y, current)
        return self.head(self.merge(torch.cat([y, z], dim=1)))


def frrn_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over both streams and every coupling."""

    def wiring(x: Span) -> Span:
        y = x.conv(5)
        for _ in range(3):
            y = y | y.conv(3).conv(3)
        z = y
        current = 1
        for s, units, _ in config["stages"]:
            s = int(s)
            y = y.pool(2, 2) if s > current else y.unpool(current // s)
            current = s
            for _ in range(int(units)):
                y = (y | z.pool(s, s)).conv(3).conv(3)
                z = z | y.unpool(s)
        y = y.unpool(current) | z
        for _ in range(3):
            y = y | y.conv(3).conv(3)
        return y

    return span_reach(wiring, max(int(s) for s, _, _ in config["stages"]))


register(
    ArchSpec(
        name="frrn",
        family="FRRN",
        factory=FRRN,
        spatial_dims=2,
        downsampling=32,
        reach=frrn_reach,
        default_tile=512,
        paper=PAPER,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "stages": FRRN_B,
            "stem_channels": 48,
            "residual_channels": 32,
            "width_mult": 1.0,
        },
        notes="FRRN B; residual stream at full resolution (memory-heavy tiles). The paper states no count.",
        small={"width_mult": 1 / 8, "stages": tuple((s, 1, c) for s, _, c in FRRN_B)},
    )
)
