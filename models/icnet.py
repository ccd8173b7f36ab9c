"""ICNet (Zhao, Qi, Shen, Shi & Jia, ICNet for Real-Time Semantic Segmentation on
High-Resolution Images, ECCV 2018).

A cascade of three branches on the image at full, 1/2 and 1/4 resolution:

- *medium* (1/2 input): the PSPNet-50 trunk up to ``conv3_1`` (stem, ``layer1``
  and the first block of ``layer2``): stride 16;
- *low* (1/4): ``conv3_1`` downsampled ×2 (bilinear), then the rest of the
  trunk (``layer2``'s other blocks, ``layer3`` and ``layer4`` dilated 2 and 4),
  the pyramid pooling of ICNet (average pooling to 1, 2, 3 and 6 bins,
  upsampled and *summed* with the features) and a 1×1 convolution to 256:
  stride 32;
- *high* (full input): three 3×3 stride-2 convolutions (32, 32, 64 channels):
  stride 8.

*Cascade feature fusion* (CFF) joins a coarse map ``F1`` with a finer ``F2``:
``F1`` upsampled ×2 and a 3×3 convolution with dilation 2 to 128 channels
(batch norm), ``F2`` by a 1×1 convolution to 128 (batch norm), summed, ReLU. CFF
(low, medium) gives stride 16, CFF (that, high) stride 8; the result is
upsampled ×2 and classified by a 1×1 convolution (stride 4), and upsampled ×4.

*Cascade label guidance*: each CFF also classifies its upsampled ``F1`` (1×1
convolution): the stride-16 and stride-8 predictions, returned in training mode
as ``{"out": ..., "aux": [1/16, 1/8]}`` with the paper's weights 0.4 and 0.4
(the stride-4 output has weight 1). The paper trains them against labels
downsampled to their scale; here they are upsampled to the input like every
auxiliary output.

Canonical: ResNet-50 trunk at full width (the paper's final model also prunes
half of every layer's kernels: ``width_mult=0.5``), 3 channels in, 19 classes
(Cityscapes); the paper states no parameter count. Standard ResNet stem
instead of the deep one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import RESNET_LAYOUTS, resnet_block_span, resnet_depth, resnet_plan
from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Zhao et al., ICNet for Real-Time Semantic Segmentation on High-Resolution Images, ECCV 2018"


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear downsampling by ``factor`` (the cascade's input and ``conv3_1`` resizing)."""
    return F.interpolate(x, scale_factor=1 / factor, mode="bilinear", align_corners=False)


class SummedPyramidPooling(nn.Module):
    """ICNet's pyramid pooling: average-pool to each bin size, upsample, add to the input."""

    def __init__(self, bins: Sequence[int]):
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(int(b)) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        out = x
        for pool in self.pools:
            out = out + F.interpolate(pool(x), size=size, mode="bilinear", align_corners=True)
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF: upsample ``F1`` ×2, dilated 3×3 conv + BN; ``F2`` 1×1 conv + BN; sum, ReLU; aux classifier."""

    def __init__(self, low: int, high: int, channels: int, num_classes: int):
        super().__init__()
        self.low = nn.Sequential(
            nn.Conv2d(low, channels, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(channels)
        )
        self.high = nn.Sequential(nn.Conv2d(high, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(low, num_classes, 1)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = upsample_aligned(f1, 2)
        return self.relu(self.low(up) + self.high(f2)), self.classifier(up)


class ICNet(nn.Module):
    """Three-branch image cascade with CFF units and cascade label guidance."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet50",
        bins: Sequence[int] = (1, 2, 3, 6),
        low_channels: int = 256,
        fusion_channels: int = 128,
        high_channels: Sequence[int] = (32, 32, 64),
        width_mult: float = 1.0,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"ICNet uses a ResNet (PSPNet) trunk, not {backbone!r}")
        scale = lambda c: max(1, round(int(c) * width_mult))  # noqa: E731
        self.backbone = make_backbone(backbone, in_channels, 8, width_mult)
        _, c2, _, c4 = self.backbone.stage_channels
        self.ppm = SummedPyramidPooling(bins)
        self.low_reduce = ConvBNReLU(c4, scale(low_channels), 1)
        high: list[nn.Module] = []
        cin = in_channels
        for c in high_channels:
            high.append(ConvBNReLU(cin, scale(c), 3, stride=2))
            cin = scale(c)
        self.high = nn.Sequential(*high)
        fusion = scale(fusion_channels)
        self.cff_medium = CascadeFeatureFusion(scale(low_channels), c2, fusion, num_classes)
        self.cff_high = CascadeFeatureFusion(fusion, cin, fusion, num_classes)
        self.classifier = nn.Conv2d(fusion, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        t = self.backbone
        medium = t.layer2[0](t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(downsample(x, 2)))))))
        low = t.layer4(t.layer3(t.layer2[1:](downsample(medium, 2))))
        low = self.low_reduce(self.ppm(low))
        fused, aux16 = self.cff_medium(low, medium)
        fused, aux8 = self.cff_high(fused, self.high(x))
        out = upsample_aligned(self.classifier(upsample_aligned(fused, 2)), 4)
        if not self.training:
            return out
        return {"out": out, "aux": [upsample_aligned(aux16, 16), upsample_aligned(aux8, 8)]}


def icnet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over the three branches (pyramid pooling left out)."""
    depth = resnet_depth(str(config["backbone"]))
    kind, _ = RESNET_LAYOUTS[depth]
    blocks = [b for stage in resnet_plan(depth, 8) for b in stage]
    first_of_layer2 = RESNET_LAYOUTS[depth][1][0]

    def wiring(x: Span) -> Span:
        m = x.resize_down(2).conv(7, 2).pool(3, 2)
        for stride, dilation in blocks[: first_of_layer2 + 1]:
            m = resnet_block_span(m, kind, stride, dilation)
        low = m.resize_down(2)
        for stride, dilation in blocks[first_of_layer2 + 1 :]:
            low = resnet_block_span(low, kind, stride, dilation)
        fused = low.upsample(2).conv(3, dilation=2) | m
        high = x
        for _ in config["high_channels"]:
            high = high.conv(3, 2)
        fused = fused.upsample(2).conv(3, dilation=2) | high
        return fused.upsample(2).upsample(4)

    return span_reach(wiring, 32)


register(
    ArchSpec(
        name="icnet",
        family="ICNet",
        factory=ICNet,
        spatial_dims=2,
        downsampling=32,
        reach=icnet_reach,
        default_tile=1024,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "backbone": "resnet50",
            "bins": (1, 2, 3, 6),
            "low_channels": 256,
            "fusion_channels": 128,
            "high_channels": (32, 32, 64),
            "width_mult": 1.0,
        },
        notes=(
            "the low branch's pyramid pooling (bins 1/2/3/6, global average pooling) makes each output "
            "depend on the whole tile; reach covers the local part only. Cascade label guidance: "
            "stride-16 and stride-8 outputs (weights 0.4, 0.4) in training mode. Full width (the "
            "paper's compressed model: width_mult=0.5). The paper states no count."
        ),
        small={"width_mult": 1 / 16},
        aux_heads={"cff_1/16": 0.4, "cff_1/8": 0.4},
    )
)
