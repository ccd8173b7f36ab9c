"""LEDNet (Wang, Zhou, Fu, Qiu, Hou, Xia & Latecki, LEDNet: A Lightweight Encoder-Decoder
Network for Real-Time Semantic Segmentation, ICIP 2019).

*Encoder* (stride 8), built from the *split-shuffle-non-bottleneck* unit
(SS-nbt): the channels are split in two halves; one runs 3×1, 1×3, then 3×1 and
1×3 dilated convolutions, the other the same with 1×3 first (ReLU between,
batch norm after each pair); the halves are concatenated, added to the input,
passed through ReLU and channel-shuffled (two groups). Stages: a downsampling
unit (3×3 stride-2 convolution concatenated with 2×2 max pooling, batch norm,
ReLU) to 32 channels and three SS-nbt; a downsampling unit to 64 and two
SS-nbt; a downsampling unit to 128 and eight SS-nbt with dilations 1, 2, 5, 9,
2, 5, 9, 17. Dropout 0.03 in the first two stages, 0.3 in the last.

*Decoder*: the *attention pyramid network* (APN). A 1×1 convolution brings the
encoder output to the classes; a three-level pyramid of single-channel maps
(7×7, 5×5 and 3×3 stride-2 convolutions, strides 16/32/64, each level also
refined by a same-size convolution) is upsampled and summed level by level
back to stride 8 into an attention map that multiplies it; a global pooling
branch (1×1 convolution to the classes) is added. The logits are upsampled ×8.
Every decoder convolution has batch norm and ReLU.

Canonical: 3 channels in, 19 classes (Cityscapes): 0.94M parameters (the
paper's figure). The pyramid's coarsest level makes the downsampling factor
64. Upsampling is the aligned bilinear of :func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = (
    "Wang et al., LEDNet: A Lightweight Encoder-Decoder Network for Real-Time Semantic Segmentation, "
    "ICIP 2019"
)


class DownsamplingUnit(nn.Module):
    """3×3 stride-2 conv (``cout − cin`` channels) beside 2×2 max pooling, concatenated; BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, 2, 1)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _factorised(c: int, dilation: int, vertical_first: bool) -> nn.Sequential:
    """k×1 / 1×k convolutions, the second pair dilated; ReLU between, BN after each pair."""
    kernels = [(3, 1), (1, 3)] if vertical_first else [(1, 3), (3, 1)]
    layers: list[nn.Module] = []
    for pair, d in enumerate((1, dilation)):
        for i, k in enumerate(kernels):
            pad = ((k[0] - 1) // 2 * d, (k[1] - 1) // 2 * d)
            layers.append(nn.Conv2d(c, c, k, padding=pad, dilation=d))
            layers.append(nn.BatchNorm2d(c) if i == 1 else nn.ReLU(inplace=True))
        if pair == 0:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SSnbt(nn.Module):
    """Split-shuffle-non-bottleneck: two factorised halves, concatenated, residual, ReLU, shuffle."""

    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        half = channels // 2
        self.left = _factorised(half, dilation, vertical_first=True)
        self.right = _factorised(channels - half, dilation, vertical_first=False)
        self.dropout = nn.Dropout2d(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.half], x[:, self.half :]
        y = self.dropout(torch.cat([self.left(a), self.right(b)], dim=1))
        y = self.relu(y + x)
        n, c, h, w = y.shape
        if c % 2:
            return y
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle


class AttentionPyramid(nn.Module):
    """APN: a 7×7 / 5×5 / 3×3 stride-2 pyramid as an attention map over the 1×1-projected features."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.mid = ConvBNReLU(cin, num_classes, 1)
        self.down1 = ConvBNReLU(cin, 1, 7, stride=2)
        self.down2 = ConvBNReLU(1, 1, 5, stride=2)
        self.down3 = nn.Sequential(ConvBNReLU(1, 1, 3, stride=2), ConvBNReLU(1, 1, 3))
        self.conv1 = ConvBNReLU(1, 1, 7)
        self.conv2 = ConvBNReLU(1, 1, 5)
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(cin, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        attention = upsample_aligned(d3, 2) + self.conv2(d2)
        attention = upsample_aligned(attention, 2) + self.conv1(d1)
        attention = upsample_aligned(attention, 2)
        return self.mid(x) * attention + self.pooled(x)


class LEDNet(nn.Module):
    """SS-nbt encoder (stride 8) + attention pyramid decoder, upsampled ×8."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        repeats: Sequence[int] = (3, 2),
        dilations: Sequence[int] = (1, 2, 5, 9, 2, 5, 9, 17),
        dropout: Sequence[float] = (0.03, 0.03, 0.3),
        width_mult: float = 1.0,
    ):
        super().__init__()
        widths = [max(2, round(int(c) * width_mult)) for c in channels]
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, c in enumerate(widths):
            layers.append(DownsamplingUnit(cin, c))
            rates = [1] * int(repeats[stage]) if stage < len(repeats) else [int(d) for d in dilations]
            layers += [SSnbt(c, d, float(dropout[stage])) for d in rates]
            cin = c
        self.encoder = nn.Sequential(*layers)
        self.decoder = AttentionPyramid(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_aligned(self.decoder(self.encoder(x)), 8)


def lednet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over the encoder and the attention pyramid (global pooling left out)."""
    repeats, dilations = config["repeats"], config["dilations"]

    def wiring(x: Span) -> Span:
        for stage in range(len(config["channels"])):
            x = x.conv(3, 2) | x.pool(2, 2)
            rates = [1] * int(repeats[stage]) if stage < len(repeats) else [int(d) for d in dilations]
            for d in rates:
                x = x | x.conv(3).conv(3, dilation=d)
        d1 = x.conv(7, 2)
        d2 = d1.conv(5, 2)
        y = d2.conv(3, 2).conv(3).upsample(2) | d2.conv(5)
        y = y.upsample(2) | d1.conv(7)
        return (y.upsample(2) | x).upsample(8)

    return span_reach(wiring, 64)


register(
    ArchSpec(
        name="lednet",
        family="LEDNet",
        factory=LEDNet,
        spatial_dims=2,
        downsampling=64,
        reach=lednet_reach,
        default_tile=1024,
        paper=PAPER,
        fully_convolutional=False,
        paper_params=940_000,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "channels": (32, 64, 128),
            "repeats": (3, 2),
            "dilations": (1, 2, 5, 9, 2, 5, 9, 17),
            "dropout": (0.03, 0.03, 0.3),
            "width_mult": 1.0,
        },
        notes=(
            "the APN's global average pooling branch makes each output depend on the whole tile; reach "
            "covers the local part only. The paper's figure (0.94M) is given to 0.01M."
        ),
        small={"width_mult": 1 / 4, "repeats": (1, 1), "dilations": (1, 2, 5, 9)},
    )
)
