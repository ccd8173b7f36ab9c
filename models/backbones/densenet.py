"""DenseNet-121/161/169/201 (Huang et al., CVPR 2017), optionally dilated for dense prediction.

Parameter names follow the common ImageNet checkpoints (``features.conv0``,
``features.denseblock1.denselayer1.norm1`` … ``features.transition3.conv``,
``features.norm5``; the ``classifier.*`` is not part of the backbone).

Output stride 8 (DenseASPP): the average poolings of the last two transitions
are removed and the convolutions of dense blocks 3 and 4 are dilated by 2 and 4.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from models.receptive_field import Span

# depth → (growth rate, initial features, layers per block)
DENSENET_LAYOUTS: dict[int, tuple[int, int, tuple[int, int, int, int]]] = {
    121: (32, 64, (6, 12, 24, 16)),
    161: (48, 96, (6, 12, 36, 24)),
    169: (32, 64, (6, 12, 32, 32)),
    201: (32, 64, (6, 12, 48, 32)),
}
BN_SIZE = 4


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (4·growth) - BN-ReLU-3×3 conv (growth, dilated); output concatenated to the input."""

    def __init__(self, cin: int, growth: int, dilation: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, BN_SIZE * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(BN_SIZE * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(BN_SIZE * growth, growth, 3, padding=dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu1(self.norm1(x)))
        return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], dim=1)


def densenet_plan(output_stride: int) -> list[tuple[int, int]]:
    """(stride of the transition before, dilation) of dense blocks 1–4 (block 1 follows the stem)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"DenseNet output_stride must be 8, 16 or 32, got {output_stride}")
    plan, stride, dilation = [(1, 1)], 4, 1
    for _ in range(3):
        if stride < output_stride:
            plan.append((2, dilation))
            stride *= 2
        else:
            dilation *= 2
            plan.append((1, dilation))
    return plan


class DenseNet(nn.Module):
    """DenseNet trunk (``features`` of the ImageNet network, with its final batch norm and ReLU)."""

    IGNORED_PREFIXES: tuple[str, ...] = ("classifier.",)

    def __init__(
        self, depth: int = 121, in_channels: int = 3, output_stride: int = 32, width_mult: float = 1.0
    ):
        super().__init__()
        if depth not in DENSENET_LAYOUTS:
            raise ValueError(f"DenseNet depth must be one of {sorted(DENSENET_LAYOUTS)}, got {depth}")
        growth, c, blocks = DENSENET_LAYOUTS[depth]
        growth, c = max(1, round(growth * width_mult)), max(1, round(c * width_mult))
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_channels, c, 7, 2, 3, bias=False),
            norm0=nn.BatchNorm2d(c),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(3, 2, 1),
        )
        for i, ((stride, dilation), n) in enumerate(zip(densenet_plan(output_stride), blocks), start=1):
            if i > 1:
                trans: list[tuple[str, nn.Module]] = [
                    ("norm", nn.BatchNorm2d(c)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv2d(c, c // 2, 1, bias=False)),
                ]
                if stride == 2:
                    trans.append(("pool", nn.AvgPool2d(2, 2)))
                layers[f"transition{i - 1}"] = nn.Sequential(OrderedDict(trans))
                c //= 2
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(c + j * growth, growth, dilation))
            layers[f"denseblock{i}"] = block
            c += n * growth
        layers["norm5"] = nn.BatchNorm2d(c)
        layers["relu5"] = nn.ReLU(inplace=True)
        self.features = nn.Sequential(layers)
        self.out_channels = c
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features(x)}


def densenet_span(x: Span, depth: int, output_stride: int) -> Span:
    """Wiring of :class:`DenseNet`'s output (every dense layer's 3×3 beside its concatenated input)."""
    _, _, blocks = DENSENET_LAYOUTS[depth]
    x = x.conv(7, 2).pool(3, 2)
    for (stride, dilation), n in zip(densenet_plan(output_stride), blocks):
        if stride == 2:
            x = x.pool(2, 2)
        for _ in range(n):
            x = x | x.conv(3, dilation=dilation)
    return x
