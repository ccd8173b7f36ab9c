"""BiSeNet (Yu, Wang, Peng, Gao, Yu & Sang, BiSeNet: Bilateral Segmentation Network for
Real-time Semantic Segmentation, ECCV 2018).

Two paths over the image:

- *spatial path*: three 3×3 stride-2 convolutions with batch norm and ReLU (64,
  128, 256 channels): wide features at stride 8 that keep spatial detail;
- *context path*: a ResNet-18 (stride 32) with a global average pooling on its
  tail. An *attention refinement module* (ARM: global average pooling, 1×1
  convolution, batch norm, sigmoid, multiplying its input) refines ``layer3``
  (stride 16) and ``layer4`` (stride 32); the pooled tail is added to the
  latter. Both are upsampled to stride 8 and concatenated.

The *feature fusion module* (FFM) concatenates the two paths, a 1×1 convolution
(batch norm, ReLU) fuses them to 256 channels, and an SE-like attention (global
pooling, 1×1 convolution, ReLU, 1×1 convolution, sigmoid) reweights the result,
which is added to it. A 1×1 classifier and ×8 upsampling follow. In training
mode the two context-path features are also classified (1×1 convolutions), the
paper's auxiliary losses (weight α = 1 each): ``{"out", "aux": [layer3, layer4]}``.

Canonical: ResNet-18 context path, 3 channels in, 19 classes (Cityscapes). The
paper's lighter Xception39 context path is not built here (``backbone`` takes
ResNets). The paper's parameter figures were not reproducible from its text;
none is asserted. Upsampling is the aligned bilinear of
:func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import resnet_depth, resnet_spans
from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Yu et al., BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation, ECCV 2018"


class AttentionRefinement(nn.Module):
    """ARM: the input times ``sigmoid(BN(conv1×1(global average pool)))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.attention(x))


class FeatureFusion(nn.Module):
    """FFM: concatenate, 1×1 conv + BN + ReLU, SE-like reweighting added to the fused map."""

    def __init__(self, cin: int, cout: int, reduction: int = 4):
        super().__init__()
        self.fuse = ConvBNReLU(cin, cout, 1)
        inner = max(1, cout // reduction)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cout, inner, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, cout, 1),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class BiSeNet(nn.Module):
    """Spatial path (stride 8) + context path (ResNet, ARMs, tail pooling) fused by the FFM."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet18",
        spatial_channels: Sequence[int] = (64, 128, 256),
        fusion_channels: int = 256,
        width_mult: float = 1.0,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"this BiSeNet's context path is a ResNet, not {backbone!r}")
        scale = lambda c: max(1, round(int(c) * width_mult))  # noqa: E731
        layers: list[nn.Module] = []
        cin = in_channels
        for c in spatial_channels:
            layers.append(ConvBNReLU(cin, scale(c), 3, stride=2))
            cin = scale(c)
        self.spatial = nn.Sequential(*layers)
        self.backbone = make_backbone(backbone, in_channels, 32, width_mult)
        _, _, c3, c4 = self.backbone.stage_channels
        self.arm16 = AttentionRefinement(c3)
        self.arm32 = AttentionRefinement(c4)
        self.tail = nn.Sequential(nn.AdaptiveAvgPool2d(1))  # a branch of its own (not a grid level)
        self.ffm = FeatureFusion(cin + c3 + c4, scale(fusion_channels))
        self.classifier = nn.Conv2d(scale(fusion_channels), num_classes, 1)
        self.aux16 = nn.Conv2d(c3, num_classes, 1)
        self.aux32 = nn.Conv2d(c4, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        spatial = self.spatial(x)
        _, _, l3, l4 = self.backbone.stages(x)
        c16 = self.arm16(l3)
        c32 = self.arm32(l4) + self.tail(l4)
        context = torch.cat([upsample_aligned(c16, 2), upsample_aligned(c32, 4)], dim=1)
        out = upsample_aligned(self.classifier(self.ffm(spatial, context)), 8)
        if not self.training:
            return out
        return {
            "out": out,
            "aux": [upsample_aligned(self.aux16(c16), 16), upsample_aligned(self.aux32(c32), 32)],
        }


def bisenet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over the spatial path and both context-path levels (global poolings left out)."""

    def wiring(x: Span) -> Span:
        spatial = x
        for _ in config["spatial_channels"]:
            spatial = spatial.conv(3, 2)
        _, _, l3, l4 = resnet_spans(x, resnet_depth(str(config["backbone"])), 32)
        return (spatial | l3.upsample(2) | l4.upsample(4)).upsample(8)

    return span_reach(wiring, 32)


register(
    ArchSpec(
        name="bisenet",
        family="BiSeNet",
        factory=BiSeNet,
        spatial_dims=2,
        downsampling=32,
        reach=bisenet_reach,
        default_tile=1024,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "backbone": "resnet18",
            "spatial_channels": (64, 128, 256),
            "fusion_channels": 256,
            "width_mult": 1.0,
        },
        notes=(
            "the ARMs, the tail and the FFM use global average pooling: each output depends on the "
            "whole tile; reach covers the local part only. Auxiliary heads on the context path's "
            "stride-16 and stride-32 features (α = 1 each) in training mode. ResNet-18 context path "
            "(no Xception39). No count asserted."
        ),
        small={"width_mult": 1 / 8},
        aux_heads={"context_16": 1.0, "context_32": 1.0},
    )
)
