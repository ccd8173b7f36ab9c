"""Aligned Xception (Xception-65) as modified for DeepLabv3+ (Chen et al., ECCV 2018).

Chollet's Xception with the three changes of the DeepLabv3+ paper (Sec. 3.2,
Fig. 4): a deeper middle flow (16 blocks instead of 8), every max pooling
replaced by a strided depthwise-separable convolution, and batch norm + ReLU
after each 3×3 depthwise convolution.

Parameter names follow the widely used PyTorch ports of this network:
``conv1``/``bn1``, ``conv2``/``bn2`` (entry stem), ``block1`` … ``block20`` (each
with a ``rep`` sequence of ReLU / separable conv / batch norm and, where the
shape changes, a ``skip`` 1×1 convolution with ``skipbn``), then ``conv3``/``bn3``
… ``conv5``/``bn5`` (exit flow). A separable convolution has ``conv1``
(depthwise), ``bn`` and ``pointwise``.

Atrous output strides follow the DeepLab rule: once the target stride is
reached, a unit that would stride runs unstrided at the current rate, and the
rate of everything after it is multiplied by the stride it gave up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.receptive_field import Reach


class SeparableConv2d(nn.Module):
    """3×3 depthwise conv → batch norm → ReLU → 1×1 pointwise conv (batch norm follows outside)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, stride, dilation, dilation, groups=cin, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.relu(self.bn(self.conv1(x))))


class XceptionBlock(nn.Module):
    """Three separable convolutions (the last may stride) plus a shortcut."""

    def __init__(
        self,
        cin: int,
        channels: Sequence[int],
        stride: int,
        dilation: int,
        start_with_relu: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = cin
        for i, cout in enumerate(channels):
            if i > 0 or start_with_relu:
                # The first ReLU must not overwrite the block input: the shortcut reads it.
                layers.append(nn.ReLU(inplace=i > 0))
            last = i == len(channels) - 1
            layers.append(SeparableConv2d(c, cout, stride if last else 1, dilation))
            layers.append(nn.BatchNorm2d(cout))
            c = cout
        self.rep = nn.Sequential(*layers)
        if stride != 1 or cin != c:
            self.skip: nn.Conv2d | None = nn.Conv2d(cin, c, 1, stride, bias=False)
            self.skipbn: nn.BatchNorm2d | None = nn.BatchNorm2d(c)
        else:
            self.skip = self.skipbn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip is None or self.skipbn is None:
            shortcut = x
        else:
            shortcut = self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


def xception_plan(output_stride: int = 16, middle_blocks: int = 16) -> list[tuple[str, int, int]]:
    """(unit, stride, dilation) for every unit, in order, after the DeepLab atrous rule."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"Xception output_stride must be 8, 16 or 32, got {output_stride}")
    nominal = [("conv1", 2), ("conv2", 1), ("block1", 2), ("block2", 2), ("block3", 2)]
    nominal += [(f"block{4 + i}", 1) for i in range(middle_blocks)]
    nominal += [(f"block{4 + middle_blocks}", 2), ("exit", 1)]
    plan = []
    current, rate = 1, 1
    for unit, stride in nominal:
        if current == output_stride:
            plan.append((unit, 1, rate))
            rate *= stride
        else:
            plan.append((unit, stride, rate))
            current *= stride
    return plan


def _scale(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


class AlignedXception(nn.Module):
    """Xception-65 trunk; ``forward`` returns ``{"low": block1 (stride 4), "out": exit flow}``.

    ``width_mult`` scales every channel count (1.0 is the paper's network).
    """

    IGNORED_PREFIXES: tuple[str, ...] = ("fc.",)

    def __init__(
        self,
        in_channels: int = 3,
        output_stride: int = 16,
        middle_blocks: int = 16,
        width_mult: float = 1.0,
    ):
        super().__init__()

        def c(n: int) -> int:
            return _scale(n, width_mult)

        plan = {
            unit: (stride, dilation) for unit, stride, dilation in xception_plan(output_stride, middle_blocks)
        }
        self.relu = nn.ReLU(inplace=True)
        self.low_relu = nn.ReLU()  # not in place: block2 (and its shortcut) reads the same map
        self.conv1 = nn.Conv2d(in_channels, c(32), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c(32))
        self.conv2 = nn.Conv2d(c(32), c(64), 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c(64))
        entry = [(c(64), c(128), False), (c(128), c(256), True), (c(256), c(728), True)]
        for i, (cin, cout, start_with_relu) in enumerate(entry, start=1):
            stride, dilation = plan[f"block{i}"]
            block = XceptionBlock(cin, [cout] * 3, stride, dilation, start_with_relu)
            self.add_module(f"block{i}", block)
        for i in range(4, 4 + middle_blocks):
            stride, dilation = plan[f"block{i}"]
            self.add_module(f"block{i}", XceptionBlock(c(728), [c(728)] * 3, stride, dilation))
        exit_name = f"block{4 + middle_blocks}"
        stride, dilation = plan[exit_name]
        self.add_module(exit_name, XceptionBlock(c(728), [c(728), c(1024), c(1024)], stride, dilation))
        self.num_blocks = 4 + middle_blocks
        _, rate = plan["exit"]
        self.conv3 = SeparableConv2d(c(1024), c(1536), dilation=rate)
        self.bn3 = nn.BatchNorm2d(c(1536))
        self.conv4 = SeparableConv2d(c(1536), c(1536), dilation=rate)
        self.bn4 = nn.BatchNorm2d(c(1536))
        self.conv5 = SeparableConv2d(c(1536), c(2048), dilation=rate)
        self.bn5 = nn.BatchNorm2d(c(2048))
        self.low_channels = c(128)
        self.out_channels = c(2048)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.block1(x)
        low = self.low_relu(x)
        for i in range(2, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        x = self.relu(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        x = self.relu(self.bn5(self.conv5(x)))
        return {"low": low, "out": x}


def xception_reach(output_stride: int = 16, middle_blocks: int = 16) -> dict[str, Reach]:
    """Receptive fields of the ``low`` and ``out`` features of :class:`AlignedXception`."""
    r = Reach()
    low = None
    for unit, stride, dilation in xception_plan(output_stride, middle_blocks):
        if unit in ("conv1", "conv2"):
            r.conv(3, stride=stride)
            continue
        # Three 3×3 (depthwise) convolutions; only the last one strides.
        r.conv(3, dilation=dilation).conv(3, dilation=dilation)
        r.conv(3, stride=stride, dilation=dilation)
        if unit == "block1":
            low = r.copy()
    assert low is not None
    return {"low": low, "out": r}
