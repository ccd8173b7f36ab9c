"""RefineNet (Lin, Milan, Shen & Reid, RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation, CVPR 2017).

The 4-cascaded RefineNet on ResNet-101: the outputs of the four ResNet stages
(strides 4, 8, 16, 32) are refined coarse to fine. ``RefineNet-4`` reads
``layer4`` alone; ``RefineNet-k`` (k = 3, 2, 1) reads ``layer k`` and the output
of ``RefineNet-(k+1)``. Every RefineNet block has

- *adaptive convolutions*: per input path, a 3×3 convolution to the block's
  width (512 for RefineNet-4, 256 for the others) and two *residual conv units*
  (RCU: ReLU, 3×3 conv, ReLU, 3×3 conv, plus the input);
- *multi-resolution fusion*: per path a 3×3 convolution to the block's width,
  upsampled to the finest path's resolution, summed (a single path skips it);
- *chained residual pooling*: ReLU, then a chain of two blocks of 5×5 max
  pooling (stride 1) and a 3×3 convolution, each block's output added to the
  running sum;
- an *output convolution*: one RCU.

After RefineNet-1 (stride 4), two RCUs, dropout and a 1×1 classifier; the logits
are upsampled ×4 (bilinear, aligned). The paper's network has no batch norm in
the refinement path (convolutions with biases).

Canonical: ResNet-101, 3 channels in, 21 classes (PASCAL VOC); the paper states
no parameter count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import resnet_depth, resnet_spans
from models.deeplab import upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Lin et al., RefineNet: Multi-Path Refinement Networks, CVPR 2017"


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResidualConvUnit(nn.Module):
    """RCU: ReLU → 3×3 conv → ReLU → 3×3 conv, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), conv3x3(channels, channels), nn.ReLU(inplace=True), conv3x3(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ChainedResidualPooling(nn.Module):
    """ReLU, then ``blocks`` × (5×5 max pooling stride 1 → 3×3 conv), each added to the sum."""

    def __init__(self, channels: int, blocks: int = 2):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.chain = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(5, 1, 2), conv3x3(channels, channels)) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        total, path = x, x
        for block in self.chain:
            path = block(path)
            total = total + path
        return total


class RefineNetBlock(nn.Module):
    """Adaptive convs + RCUs per path, multi-resolution fusion, chained residual pooling, output RCU.

    ``cins`` are the paths' channels, finest path first; coarser paths are at half the
    resolution of the one before.
    """

    def __init__(self, cins: Sequence[int], width: int, crp_blocks: int = 2):
        super().__init__()
        self.adapt = nn.ModuleList(
            nn.Sequential(conv3x3(c, width), ResidualConvUnit(width), ResidualConvUnit(width)) for c in cins
        )
        self.fuse = nn.ModuleList(conv3x3(width, width) for _ in cins) if len(cins) > 1 else None
        self.crp = ChainedResidualPooling(width, crp_blocks)
        self.output = ResidualConvUnit(width)

    def forward(self, *paths: torch.Tensor) -> torch.Tensor:
        adapted = [adapt(p) for adapt, p in zip(self.adapt, paths)]
        if self.fuse is None:
            x = adapted[0]
        else:
            x = sum(upsample_aligned(conv(a), 2**i) for i, (conv, a) in enumerate(zip(self.fuse, adapted)))
        return self.output(self.crp(x))


class RefineNet(nn.Module):
    """4-cascaded RefineNet on a ResNet; logits at stride 4, upsampled ×4."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        widths: Sequence[int] = (256, 256, 256, 512),
        crp_blocks: int = 2,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"RefineNet uses a ResNet backbone, not {backbone!r}")
        self.backbone = make_backbone(backbone, in_channels, 32, width_mult)
        stage = self.backbone.stage_channels
        w = [max(1, round(int(c) * width_mult)) for c in widths]
        self.refine4 = RefineNetBlock([stage[3]], w[3], crp_blocks)
        self.refine3 = RefineNetBlock([stage[2], w[3]], w[2], crp_blocks)
        self.refine2 = RefineNetBlock([stage[1], w[2]], w[1], crp_blocks)
        self.refine1 = RefineNetBlock([stage[0], w[1]], w[0], crp_blocks)
        self.classifier = nn.Sequential(
            ResidualConvUnit(w[0]),
            ResidualConvUnit(w[0]),
            nn.Dropout2d(dropout),
            nn.Conv2d(w[0], num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1, l2, l3, l4 = self.backbone.stages(x)
        r = self.refine4(l4)
        r = self.refine3(l3, r)
        r = self.refine2(l2, r)
        r = self.refine1(l1, r)
        return upsample_aligned(self.classifier(r), 4)


def _rcu(s: Span) -> Span:
    return s | s.conv(3).conv(3)


def _block(paths: Sequence[Span], crp_blocks: int) -> Span:
    adapted = [_rcu(_rcu(p.conv(3))) for p in paths]
    if len(paths) == 1:
        x = adapted[0]
    else:
        x = adapted[0].conv(3)
        for i, a in enumerate(adapted[1:], start=1):
            x = x | a.conv(3).upsample(2**i)
    total, path = x, x
    for _ in range(crp_blocks):
        path = path.pool(5).conv(3)
        total = total | path
    return _rcu(total)


def refinenet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over all four paths of the cascade."""
    blocks = int(config["crp_blocks"])

    def wiring(x: Span) -> Span:
        l1, l2, l3, l4 = resnet_spans(x, resnet_depth(str(config["backbone"])), 32)
        r = _block([l4], blocks)
        for level in (l3, l2, l1):
            r = _block([level, r], blocks)
        return _rcu(_rcu(r)).upsample(4)

    return span_reach(wiring, 32)


register(
    ArchSpec(
        name="refinenet",
        family="RefineNet",
        factory=RefineNet,
        spatial_dims=2,
        downsampling=32,
        reach=refinenet_reach,
        default_tile=512,
        paper=PAPER,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet101",
            "widths": (256, 256, 256, 512),
            "crp_blocks": 2,
            "width_mult": 1.0,
            "dropout": 0.5,
        },
        notes=(
            "4-cascaded RefineNet; 512 channels in RefineNet-4, 256 in the others; chained residual "
            "pooling with two 5×5 pooling blocks (the paper's figure). The paper states no count."
        ),
        small={"width_mult": 1 / 16, "backbone": "resnet50"},
    )
)
