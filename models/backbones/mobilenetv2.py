"""MobileNetV2 (Sandler et al., CVPR 2018) with atrous output strides, for DeepLabv3+.

Parameter names follow the common ImageNet checkpoints: ``features.0.0.weight``
(stem conv), ``features.0.1.*`` (its batch norm), ``features.N.conv.*`` for the
17 inverted-residual blocks. The checkpoints' last 1×1 convolution to 1280
channels (``features.18``) and ``classifier`` belong to the classification head;
segmentation uses the 320-channel output of the last bottleneck, as the
paper's "Mobile DeepLabv3" does, so those keys are ignored when loading.
"""

from __future__ import annotations

import torch
from torch import nn

from models.receptive_field import Reach

# Table 2 of the paper: expansion t, output channels c, repeats n, first stride s.
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (never down by over 10%).

    This is how MobileNet width multipliers are applied, so scaled networks keep
    hardware-friendly channel counts and checkpoint shapes.
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Convolution (no bias) → batch norm → ReLU6, named ``0``, ``1``, ``2``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ):
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expansion (if t > 1) → 3×3 depthwise → linear 1×1 projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def mobilenetv2_plan(output_stride: int = 16) -> list[tuple[int, int, int, int]]:
    """(expansion, channels, stride, dilation) of each of the 17 blocks (DeepLab atrous rule)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"MobileNetV2 output_stride must be 8, 16 or 32, got {output_stride}")
    current, rate = 2, 1  # after the stride-2 stem
    plan = []
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            if current == output_stride:
                plan.append((t, c, 1, rate))
                rate *= stride
            else:
                plan.append((t, c, stride, rate))
                current *= stride
    return plan


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk; ``forward`` returns ``{"low": features.3 (stride 4), "out": features.17}``.

    ``width_mult`` is the paper's width multiplier (channels rounded to multiples of 8).
    """

    IGNORED_PREFIXES: tuple[str, ...] = ("classifier.", "features.18.")

    def __init__(self, in_channels: int = 3, output_stride: int = 16, width_mult: float = 1.0):
        super().__init__()
        cin = round_channels(32 * width_mult)
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, cin, 3, stride=2)]
        for t, c, stride, dilation in mobilenetv2_plan(output_stride):
            cout = round_channels(c * width_mult)
            layers.append(InvertedResidual(cin, cout, stride, t, dilation))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.low_channels = round_channels(24 * width_mult)
        self.out_channels = cin
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.features[:4](x)
        return {"low": low, "out": self.features[4:](low)}


def mobilenetv2_reach(output_stride: int = 16) -> dict[str, Reach]:
    """Receptive fields of the ``low`` and ``out`` features of :class:`MobileNetV2`."""
    r = Reach().conv(3, stride=2)
    low = None
    for index, (_, _, stride, dilation) in enumerate(mobilenetv2_plan(output_stride), start=1):
        r.conv(3, stride=stride, dilation=dilation)  # the depthwise 3×3; the 1×1s add nothing
        if index == 3:
            low = r.copy()
    assert low is not None
    return {"low": low, "out": r}
