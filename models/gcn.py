"""Large Kernel Matters: global convolutional network (Peng, Zhang, Yu, Luo & Sun, CVPR 2017).

A ResNet (ResNet-152 in the paper) gives features at strides 4, 8, 16, 32
(``layer1`` … ``layer4``). Each goes through a *Global Convolutional Network*
(GCN) module: two branches, ``k×1`` then ``1×k`` and ``1×k`` then ``k×1``
convolutions straight to the class scores (no batch norm or nonlinearity),
summed; ``k = 15`` in the paper's final model. Each score map then passes a
*Boundary Refinement* (BR) block, a residual ``x + conv3×3(ReLU(conv3×3(x)))``.
From the deepest level up, the refined scores are upsampled ×2 by a learned
transposed convolution (initialised to bilinear) and added to the next level's
refined scores, and the sum is refined by another BR. After stride 4, two more
×2 upsamplings, each followed by a BR, return to the input resolution:

``s5 = BR(GCN(c5))``; ``s_l = BR(BR(GCN(c_l)) + up(s_{l+1}))`` for l = 4, 3, 2;
``out = BR(up(BR(up(s2))))``.

Canonical: ResNet-152, ``k = 15``, 3 channels in, 21 classes (PASCAL VOC
2012). The paper states no parameter count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import RESNET_LAYOUTS, resnet_plan
from models.fcn import bilinear_upsampling
from models.receptive_field import chain_reach, conv, tconv
from models.registry import ArchSpec, register

PAPER = "Peng et al., Large Kernel Matters (Global Convolutional Network), CVPR 2017"


class GlobalConvolution(nn.Module):
    """(k×1 → 1×k) + (1×k → k×1) convolutions to ``cout`` channels."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        half = k // 2
        self.left = nn.Sequential(
            nn.Conv2d(cin, cout, (k, 1), padding=(half, 0)), nn.Conv2d(cout, cout, (1, k), padding=(0, half))
        )
        self.right = nn.Sequential(
            nn.Conv2d(cin, cout, (1, k), padding=(0, half)), nn.Conv2d(cout, cout, (k, 1), padding=(half, 0))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    """``x + conv3×3(ReLU(conv3×3(x)))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class GCN(nn.Module):
    """ResNet + GCN/BR at four levels, fused top-down with learned ×2 upsamplings."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet152",
        kernel: int = 15,
        width_mult: float = 1.0,
    ):
        super().__init__()
        if not backbone.startswith("resnet") or kernel % 2 != 1:
            raise ValueError(f"GCN needs a ResNet backbone and an odd kernel, got {backbone!r}, {kernel}")
        self.backbone = make_backbone(backbone, in_channels, 32, width_mult)
        c4 = self.backbone.out_channels
        n = num_classes
        self.gcn = nn.ModuleList(GlobalConvolution(c4 // 2**i, n, kernel) for i in (3, 2, 1, 0))
        self.br_lateral = nn.ModuleList(BoundaryRefinement(n) for _ in range(4))
        self.br_fused = nn.ModuleList(BoundaryRefinement(n) for _ in range(3))
        self.up = nn.ModuleList(bilinear_upsampling(n, 2, learned=True) for _ in range(5))
        self.br_final = nn.ModuleList(BoundaryRefinement(n) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        c1 = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        c2 = b.layer2(c1)
        c3 = b.layer3(c2)
        c4 = b.layer4(c3)
        laterals = [br(gcn(c)) for gcn, br, c in zip(self.gcn, self.br_lateral, (c1, c2, c3, c4))]
        score = laterals[3]
        for level in (2, 1, 0):
            score = self.br_fused[level](laterals[level] + self.up[level + 1](score))
        score = self.br_final[0](self.up[0](score))
        return self.br_final[1](self.up[4](score))


def resnet_chain(depth: int, stages: int) -> list[tuple]:
    """Stem and the first ``stages`` ResNet stages (stride 32) along their 3×3 residual paths."""
    kind, _ = RESNET_LAYOUTS[depth]
    chain = [conv(7, 2, 3), conv(3, 2, 1)]
    for blocks in resnet_plan(depth, 32)[:stages]:
        for stride, _dilation in blocks:
            chain.append(conv(3, stride, 1))
            if kind == "basic":
                chain.append(conv(3))
    return chain


def gcn_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over the four lateral paths."""
    depth, k = int(str(config["backbone"])[len("resnet") :]), int(config["kernel"])
    up, br = tconv(4, 2, 1), [conv(3), conv(3)]
    tail = [up, *br, up, *br]
    chains = []
    for level in (1, 2, 3, 4):
        path = [*resnet_chain(depth, level), conv(k), *br]
        if level < 4:
            path += br  # the fused BR at its own level
        path += [item for _ in range(level - 1) for item in (up, *br)]
        chains.append(path + tail)
    return chain_reach(*chains, factor=32)


register(
    ArchSpec(
        name="gcn",
        family="GCN",
        factory=GCN,
        spatial_dims=2,
        downsampling=32,
        reach=gcn_reach,
        default_tile=512,
        paper=PAPER,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet152",
            "kernel": 15,
            "width_mult": 1.0,
        },
        notes="ResNet-152, k=15; the paper states no count.",
        small={"width_mult": 1 / 16, "kernel": 7, "backbone": "resnet18"},
    )
)
