"""ENet (Paszke, Chaurasia, Kim & Culurciello, arXiv 1606.02147, 2016): real-time segmentation.

The paper's Table 1, for a 3-channel input:

- *initial*: a 3×3 stride-2 convolution to 13 channels concatenated with a 2×2
  max-pooling of the input (16 channels at stride 2).
- *stage 1*: downsampling bottleneck 1.0 to 64 channels, four regular bottlenecks.
- *stages 2 and 3*: (2.0 downsampling to 128, stage 2 only) then regular,
  dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16.
- *stage 4*: upsampling bottleneck to 64 channels, two regular bottlenecks;
  *stage 5*: upsampling bottleneck to 16, one regular.
- *fullconv*: a 2×2 stride-2 transposed convolution to the classes.

A bottleneck's extension branch is 1×1 projection (channels / 4), the main
convolution (3×3, dilated 3×3, or asymmetric 5×1 then 1×5), and 1×1
expansion, each followed by batch norm and PReLU (the last by batch norm only),
then spatial dropout (0.01 in stage 1, 0.1 after); it is added to the main
branch and a PReLU follows. Downsampling bottlenecks project with a 2×2 stride-2
convolution, and their main branch max-pools (keeping the indices) and
zero-pads the channels; upsampling bottlenecks use a 3×3 stride-2 transposed
convolution, and their main branch is a 1×1 convolution followed by max-unpooling
with the indices of the matching downsampling. Convolutions have no bias (the
paper's choice), except the final classifier. Canonical: 3 channels in, 12
classes (CamVid with void; the paper's Cityscapes model has 19/20).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.receptive_field import chain_reach, conv, tconv
from models.registry import ArchSpec, register

PAPER = "Paszke et al., ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation, 2016"
# (kind, parameter) of the bottlenecks shared by stages 2 and 3.
STAGE_2_3 = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)


def _bn_prelu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.PReLU(channels)]


class InitialBlock(nn.Module):
    """3×3 stride-2 convolution (``out - in`` channels) ‖ 2×2 max-pooling, then BN + PReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn, self.act = _bn_prelu(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _main_conv(channels: int, kind: str, value: int) -> list[nn.Module]:
    if kind == "asymmetric":
        return [
            nn.Conv2d(channels, channels, (value, 1), padding=(value // 2, 0), bias=False),
            nn.Conv2d(channels, channels, (1, value), padding=(0, value // 2), bias=False),
        ]
    dilation = value if kind == "dilated" else 1
    return [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)]


class Bottleneck(nn.Module):
    """Regular, dilated or asymmetric bottleneck with an identity main branch."""

    def __init__(self, channels: int, kind: str = "regular", value: int = 1, dropout: float = 0.1):
        super().__init__()
        inner = max(1, channels // 4)
        self.ext = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False),
            *_bn_prelu(inner),
            *_main_conv(inner, kind, value),
            *_bn_prelu(inner),
            nn.Conv2d(inner, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.ext(x))


class DownsamplingBottleneck(nn.Module):
    """2×2 stride-2 projection branch; max-pool (indices kept) + zero channel padding main branch."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        inner = max(1, cout // 4)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.ext = nn.Sequential(
            nn.Conv2d(cin, inner, 2, 2, bias=False),
            *_bn_prelu(inner),
            nn.Conv2d(inner, inner, 3, padding=1, bias=False),
            *_bn_prelu(inner),
            nn.Conv2d(inner, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.Dropout2d(dropout),
        )
        self.pad = cout - cin
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = self.pool(x)
        main = F.pad(main, [0, 0, 0, 0, 0, self.pad])
        return self.act(main + self.ext(x)), indices


class UpsamplingBottleneck(nn.Module):
    """3×3 stride-2 transposed-convolution branch; 1×1 conv + max-unpooling main branch."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        inner = max(1, cin // 4)
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.ext = nn.Sequential(
            nn.Conv2d(cin, inner, 1, bias=False),
            *_bn_prelu(inner),
            nn.ConvTranspose2d(inner, inner, 3, 2, 1, output_padding=1, bias=False),
            *_bn_prelu(inner),
            nn.Conv2d(inner, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        main = self.unpool(self.main(x), indices)
        return self.act(main + self.ext(x))


def _scaled(channels: int, width_mult: float) -> int:
    return max(4, round(channels * width_mult))


class ENet(nn.Module):
    """ENet as in the paper's Table 1 (``width_mult`` scales every channel count)."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0):
        super().__init__()
        c16, c64, c128 = (_scaled(c, width_mult) for c in (16, 64, 128))
        self.initial = InitialBlock(in_channels, max(c16, in_channels + 1))
        c16 = max(c16, in_channels + 1)
        self.down1 = DownsamplingBottleneck(c16, c64, 0.01)
        self.stage1 = nn.Sequential(*(Bottleneck(c64, dropout=0.01) for _ in range(4)))
        self.down2 = DownsamplingBottleneck(c64, c128, 0.1)
        self.stage2 = nn.Sequential(*(Bottleneck(c128, k, v, 0.1) for k, v in STAGE_2_3))
        self.stage3 = nn.Sequential(*(Bottleneck(c128, k, v, 0.1) for k, v in STAGE_2_3))
        self.up4 = UpsamplingBottleneck(c128, c64, 0.1)
        self.stage4 = nn.Sequential(*(Bottleneck(c64, dropout=0.1) for _ in range(2)))
        self.up5 = UpsamplingBottleneck(c64, c16, 0.1)
        self.stage5 = Bottleneck(c16, dropout=0.1)
        self.fullconv = nn.ConvTranspose2d(c16, num_classes, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        x, idx1 = self.down1(x)
        x, idx2 = self.down2(self.stage1(x))
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, idx2))
        x = self.stage5(self.up5(x, idx1))
        return self.fullconv(x)


def enet_reach(config: Any = None) -> int:
    """Exact reach along the extension branches (each covers its block's main branch)."""
    middle = [conv(5) if kind == "asymmetric" else conv(3, dilation=v) for kind, v in STAGE_2_3]
    chain = [
        conv(3, 2, 1),
        conv(2, 2, 0),
        conv(3),
        *[conv(3)] * 4,
        conv(2, 2, 0),
        conv(3),
        *middle,
        *middle,
        tconv(3, 2, 1),
        conv(3),
        conv(3),
        tconv(3, 2, 1),
        conv(3),
        tconv(2, 2, 0),
    ]
    return chain_reach(chain, factor=8)


register(
    ArchSpec(
        name="enet",
        family="ENet",
        factory=ENet,
        spatial_dims=2,
        downsampling=8,
        reach=enet_reach,
        default_tile=512,
        paper=PAPER,
        paper_params=370_000,
        defaults={"in_channels": 3, "num_classes": 12, "width_mult": 1.0},
        notes="the paper's figure (0.37M, Table 3) is given to 0.01M.",
        small={"width_mult": 1 / 4},
    )
)
