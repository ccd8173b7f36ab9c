"""DANet (Fu, Liu, Tian, Li, Bao, Fang & Lu, Dual Attention Network for Scene Segmentation, CVPR 2019).

A dilated ResNet (output stride 8) feeds two parallel attention branches. Each
first reduces the 2048 channels to 512 with a 3×3 convolution (batch norm,
ReLU). The *position attention module* forms queries and keys by 1×1
convolutions to 512/8 channels and values by a 1×1 convolution, attends every
position to every other (softmax over positions) and adds the result, scaled by
a learned ``α`` initialised to 0, to its input. The *channel attention module*
attends channels to channels (the channel Gram matrix, softmax of
``max − energy`` as the authors' code) and adds its result scaled by ``β``
(initialised to 0). Each branch ends in a 3×3 convolution (batch norm, ReLU);
the two are summed, and dropout 0.1 and a 1×1 classifier follow. The logits are
upsampled ×8.

Canonical: ResNet-101, 3 channels in, 19 classes (Cityscapes); the paper states
no parameter count. The attention sums over all positions: the network is not
fully convolutional.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import resnet_depth, resnet_spans
from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, GlobalContext, register

PAPER = "Fu et al., Dual Attention Network for Scene Segmentation (DANet), CVPR 2019"


class PositionAttention(GlobalContext):
    """``α · Σ_j softmax_j(q_i · k_j) v_j``: the attended part only (the caller adds the input)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        k = self.key(x).flatten(2)  # (N, C', HW)
        attention = torch.softmax(q @ k, dim=-1)  # (N, HW, HW)
        v = self.value(x).flatten(2)  # (N, C, HW)
        return self.alpha * (v @ attention.transpose(1, 2)).view(n, c, h, w)


class ChannelAttention(GlobalContext):
    """``β · Σ_j softmax_j(max − x_i · x_j) x_j`` over channels: the attended part only."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.flatten(2)  # (N, C, HW)
        energy = flat @ flat.transpose(1, 2)  # (N, C, C)
        energy = energy.amax(dim=-1, keepdim=True).expand_as(energy) - energy
        return self.beta * (torch.softmax(energy, dim=-1) @ flat).view(n, c, h, w)


class DualAttentionHead(nn.Module):
    """Reduce, attend (position / channel) with a residual, 3×3 conv; sum the two branches; classify."""

    def __init__(self, cin: int, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.reduce_p = ConvBNReLU(cin, channels, 3)
        self.reduce_c = ConvBNReLU(cin, channels, 3)
        self.pam = PositionAttention(channels)
        self.cam = ChannelAttention()
        self.conv_p = ConvBNReLU(channels, channels, 3)
        self.conv_c = ConvBNReLU(channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.reduce_p(x)
        c = self.reduce_c(x)
        p = self.conv_p(p + self.pam(p))
        c = self.conv_c(c + self.cam(c))
        return self.classifier(p + c)


class DANet(nn.Module):
    """Dilated ResNet (stride 8) + position and channel attention, summed, upsampled ×8."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        head_channels: int = 512,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"DANet uses a ResNet backbone, not {backbone!r}")
        self.backbone = make_backbone(backbone, in_channels, 8, width_mult)
        mid = max(1, round(head_channels * width_mult))
        self.head = DualAttentionHead(self.backbone.out_channels, mid, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_aligned(self.head(self.backbone(x)["out"]), 8)


def danet_reach(config: Mapping[str, Any]) -> int:
    """Local reach: backbone, two 3×3 convolutions per branch, ×8 upsampling."""

    def wiring(x: Span) -> Span:
        return resnet_spans(x, resnet_depth(str(config["backbone"])), 8)[3].conv(3).conv(3).upsample(8)

    return span_reach(wiring, 8)


register(
    ArchSpec(
        name="danet",
        family="DANet",
        factory=DANet,
        spatial_dims=2,
        downsampling=8,
        reach=danet_reach,
        default_tile=512,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "backbone": "resnet101",
            "head_channels": 512,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes=(
            "position and channel attention sum over all positions (a global pooling in effect): each "
            "output depends on the whole tile; reach covers the local part only. Memory grows with the "
            "square of the tile's stride-8 area. Standard ResNet stem. The paper states no count."
        ),
        small={"width_mult": 1 / 16, "backbone": "resnet50"},
    )
)
