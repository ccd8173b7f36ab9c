"""DenseASPP (Yang, Yu, Zhang, Li & Yang, DenseASPP for Semantic Segmentation in Street
Scenes, CVPR 2018).

A DenseNet-121 made atrous (output stride 8: the last two transitions keep
their convolution but lose their pooling, dense blocks 3 and 4 dilated by 2 and
4) feeds the *densely connected ASPP*: five atrous layers with rates 3, 6, 12,
18 and 24, each reading the concatenation of the backbone output and every
earlier atrous layer's output; each is batch norm, ReLU, a 1×1 convolution to
512 channels, batch norm, ReLU and a 3×3 convolution at its rate to 128
channels (dropout 0.1). All outputs and the backbone features are concatenated
(1024 + 5 × 128 channels), and dropout and a 1×1 classifier follow; the logits
are upsampled ×8.

Canonical: DenseNet-121, 3 channels in, 19 classes (Cityscapes); the paper
states no parameter count for this model. Upsampling is the aligned bilinear
of :func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones.densenet import DenseNet, densenet_span
from models.deeplab import upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Yang et al., DenseASPP for Semantic Segmentation in Street Scenes, CVPR 2018"


class AtrousLayer(nn.Sequential):
    """BN-ReLU-1×1 conv (reduce) - BN-ReLU-3×3 conv at ``rate``, dropout."""

    def __init__(self, cin: int, mid: int, cout: int, rate: int, dropout: float):
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=rate, dilation=rate),
            nn.Dropout2d(dropout),
        )


class DenseASPP(nn.Module):
    """Atrous DenseNet (stride 8) + densely connected atrous layers, classified, upsampled ×8."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 121,
        rates: Sequence[int] = (3, 6, 12, 18, 24),
        reduce_channels: int = 512,
        layer_channels: int = 128,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.backbone = DenseNet(depth, in_channels, 8, width_mult)
        c = self.backbone.out_channels
        mid, out = max(1, round(reduce_channels * width_mult)), max(1, round(layer_channels * width_mult))
        self.aspp = nn.ModuleList()
        for i, rate in enumerate(rates):
            self.aspp.append(AtrousLayer(c + i * out, mid, out, int(rate), dropout))
        self.classifier = nn.Sequential(
            nn.Dropout2d(dropout), nn.Conv2d(c + len(rates) * out, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)["out"]
        for layer in self.aspp:
            features = torch.cat([features, layer(features)], dim=1)
        return upsample_aligned(self.classifier(features), 8)


def denseaspp_reach(config: Mapping[str, Any]) -> int:
    """Exact reach: the dilated DenseNet, then each atrous layer beside its concatenated input."""

    def wiring(x: Span) -> Span:
        y = densenet_span(x, int(config["depth"]), 8)
        for rate in config["rates"]:
            y = y | y.conv(3, dilation=int(rate))
        return y.upsample(8)

    return span_reach(wiring, 8)


register(
    ArchSpec(
        name="denseaspp",
        family="DenseASPP",
        factory=DenseASPP,
        spatial_dims=2,
        downsampling=8,
        reach=denseaspp_reach,
        default_tile=512,
        paper=PAPER,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "depth": 121,
            "rates": (3, 6, 12, 18, 24),
            "reduce_channels": 512,
            "layer_channels": 128,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes="DenseNet-121 backbone at output stride 8. The paper states no count for this model.",
        small={"width_mult": 1 / 8},
    )
)
