"""FastFCN (Wu, Zhang, Huang, Liang & Yu, FastFCN: Rethinking Dilated Convolution in the
Backbone for Semantic Segmentation, arXiv 1903.11816, 2019).

Instead of dilating the backbone (output stride 8), a plain ResNet (stride 32)
is followed by the *Joint Pyramid Upsampling* module (JPU): ``layer2``
(stride 8), ``layer3`` (16) and ``layer4`` (32) each pass a 3×3 convolution to
512 channels (batch norm, ReLU), are upsampled to stride 8 and concatenated;
four parallel depthwise-separable 3×3 convolutions with dilation 1, 2, 4 and 8
(1536 → 512 each, batch norm, ReLU) read the concatenation, and their outputs
are concatenated (2048 channels at stride 8). A segmentation head follows: the
paper's main model is *EncNet + JPU* (``head="encnet"``: the context encoding
head of :mod:`models.encnet`, with its SE-loss), and it also pairs JPU with
DeepLabv3's ASPP (``head="aspp"``: rates 12/24/36 at stride 8 with image
pooling). An FCN auxiliary head on ``layer3`` is returned in training mode
(weight 0.2, as EncNet). The logits are upsampled ×8.

Canonical: ResNet-101, EncNet head, 3 channels in, 21 classes; the paper
states no parameter count. Upsampling is the aligned bilinear of
:func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import resnet_depth, resnet_spans
from models.deeplab import ASPP, ConvBNReLU, SeparableConvBNReLU, upsample_aligned
from models.encnet import EncHead, fcn_head
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Wu et al., FastFCN: Rethinking Dilated Convolution in the Backbone (JPU), arXiv 1903.11816, 2019"
HEADS = ("encnet", "aspp")


class JointPyramidUpsampling(nn.Module):
    """JPU: 3×3 convs on strides 8/16/32, upsampled to 8, concatenated, dilated separable convs."""

    def __init__(self, cins: Sequence[int], width: int, dilations: Sequence[int] = (1, 2, 4, 8)):
        super().__init__()
        self.reduce = nn.ModuleList(ConvBNReLU(c, width, 3) for c in cins)
        self.dilated = nn.ModuleList(SeparableConvBNReLU(len(cins) * width, width, int(d)) for d in dilations)
        self.out_channels = len(dilations) * width

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        ups = [upsample_aligned(conv(f), 2**i) for i, (conv, f) in enumerate(zip(self.reduce, feats))]
        x = torch.cat(ups, dim=1)
        return torch.cat([branch(x) for branch in self.dilated], dim=1)


class FastFCN(nn.Module):
    """ResNet (stride 32) + JPU + EncNet (or ASPP) head; FCN aux head on layer3."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        head: str = "encnet",
        jpu_channels: int = 512,
        head_channels: int = 512,
        codewords: int = 32,
        aspp_rates: Sequence[int] = (12, 24, 36),
        aux_channels: int = 256,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"FastFCN uses a ResNet backbone, not {backbone!r}")
        if head not in HEADS:
            raise ValueError(f"FastFCN head must be one of {HEADS}, got {head!r}")
        self.backbone = make_backbone(backbone, in_channels, 32, width_mult)
        chans = self.backbone.stage_channels
        self.jpu = JointPyramidUpsampling(chans[1:], max(1, round(jpu_channels * width_mult)))
        mid = max(1, round(head_channels * width_mult))
        if head == "encnet":
            self.head: nn.Module = EncHead(self.jpu.out_channels, mid, codewords, num_classes, dropout)
        else:
            self.head = nn.Sequential(
                ASPP(self.jpu.out_channels, mid, [int(r) for r in aspp_rates], dropout=dropout),
                nn.Conv2d(mid, num_classes, 1),
            )
        self.aux = fcn_head(chans[2], max(1, round(aux_channels * width_mult)), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        _, c2, c3, c4 = self.backbone.stages(x)
        y = self.head(self.jpu([c2, c3, c4]))
        logits, se = y if isinstance(y, tuple) else (y, None)
        out = upsample_aligned(logits, 8)
        if not self.training:
            return out
        result = {"out": out, "aux": [upsample_aligned(self.aux(c3), 16)]}
        if se is not None:
            result["se"] = se
        return result


def fastfcn_reach(config: Mapping[str, Any]) -> int:
    """Local reach over the three JPU inputs, its dilated convolutions and the head."""

    def wiring(x: Span) -> Span:
        _, c2, c3, c4 = resnet_spans(x, resnet_depth(str(config["backbone"])), 32)
        cat = c2.conv(3) | c3.conv(3).upsample(2) | c4.conv(3).upsample(4)
        y = cat.conv(3, dilation=1) | cat.conv(3, dilation=2) | cat.conv(3, dilation=4)
        y = y | cat.conv(3, dilation=8)
        if config["head"] == "encnet":
            y = y.conv(3)
        else:
            y = y | y.conv(3, dilation=max(int(r) for r in config["aspp_rates"]))
        return y.upsample(8)

    return span_reach(wiring, 32)


register(
    ArchSpec(
        name="fastfcn",
        family="FastFCN",
        factory=FastFCN,
        spatial_dims=2,
        downsampling=32,
        reach=fastfcn_reach,
        default_tile=512,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet101",
            "head": "encnet",
            "jpu_channels": 512,
            "head_channels": 512,
            "codewords": 32,
            "aspp_rates": (12, 24, 36),
            "aux_channels": 256,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes=(
            "EncNet + JPU; its Encoding layer (or ASPP's image pooling with head='aspp') is a global "
            "pooling: each output depends on the whole tile; reach covers the local part only. SE-loss "
            "(0.2) and FCN auxiliary head on layer3 (0.2) in training mode. The paper states no count."
        ),
        small={"width_mult": 1 / 16, "codewords": 4, "backbone": "resnet50"},
        aux_heads={"layer3": 0.2},
        se_loss=0.2,
    )
)
