"""ResNet-18/34/50/101/152 (He et al., CVPR 2016) with atrous output strides 8, 16 or 32.

Parameter names follow the common ImageNet checkpoints (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``
…; the ``fc.*`` classifier is not part of the backbone). Bottleneck blocks
stride in their 3×3 convolution (the layout those checkpoints use).

For dense prediction (DeepLab) the strides of the last one or two stages are
replaced by dilation: output stride 16 dilates ``layer4`` by 2, output stride 8
dilates ``layer3`` by 2 and ``layer4`` by 4. The first block of a dilated stage
keeps the previous rate (its input still has the coarser sampling); the others
use the new rate. ``multi_grid`` (DeepLab v3's "Multi-grid") multiplies the rate
of each block of ``layer4`` by its own unit rate, e.g. (1, 2, 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.receptive_field import Reach, Span

# depth → (block kind, blocks per stage)
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, dilated), 1×1 expand ×4, with a shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The 1×1 strided projection shortcut, where the shape changes."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def resnet_plan(
    depth: int, output_stride: int = 32, multi_grid: Sequence[int] | None = None
) -> list[list[tuple[int, int]]]:
    """(stride, dilation) of every block's first 3×3 convolution, stage by stage."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
    dilated_stages = {32: 0, 16: 1, 8: 2}.get(output_stride)
    if dilated_stages is None:
        raise ValueError(f"ResNet output_stride must be 8, 16 or 32, got {output_stride}")
    _, counts = RESNET_LAYOUTS[depth]
    plan: list[list[tuple[int, int]]] = []
    dilation = 1
    for stage, n in enumerate(counts):
        stride = 1 if stage == 0 else 2
        first_dilation = dilation
        if stage >= 4 - dilated_stages:
            dilation *= stride
            stride = 1
        blocks = [(stride, first_dilation)] + [(1, dilation)] * (n - 1)
        if stage == 3 and multi_grid is not None:
            if len(multi_grid) != n:
                raise ValueError(f"multi_grid needs {n} unit rates for layer4, got {multi_grid}")
            blocks = [(s, dilation * int(u)) for (s, _), u in zip(blocks, multi_grid)]
        plan.append(blocks)
    return plan


class ResNet(nn.Module):
    """ResNet trunk; ``forward`` returns ``{"low": layer1 (stride 4), "out": layer4}``.

    ``width`` is the stem's channel count (64 in the paper); every stage scales with it.
    """

    IGNORED_PREFIXES: tuple[str, ...] = ("fc.",)

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        width: int = 64,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
    ):
        super().__init__()
        kind, _ = RESNET_LAYOUTS.get(depth, ("", ()))
        plan = resnet_plan(depth, output_stride, multi_grid)
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        stages: list[nn.Sequential] = []
        for stage, blocks in enumerate(plan):
            planes = width * 2**stage
            layer = []
            for stride, dilation in blocks:
                layer.append(block(cin, planes, stride, dilation))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.low_channels = width * block.expansion
        self.out_channels = cin
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        out = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "out": out}

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``layer1`` … ``layer4`` (for decoders that fuse several levels)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    @property
    def stage_channels(self) -> list[int]:
        """Channels of ``layer1`` … ``layer4``."""
        return [self.low_channels * 2**i for i in range(4)]


def resnet_depth(name: str) -> int:
    """The depth in a backbone name: ``"resnet101"`` → 101."""
    depth = int(name.removeprefix("resnet")) if name.removeprefix("resnet").isdigit() else 0
    if not name.startswith("resnet") or depth not in RESNET_LAYOUTS:
        raise ValueError(f"not a ResNet backbone: {name!r}")
    return depth


def resnet_block_span(x: Span, kind: str, stride: int, dilation: int) -> Span:
    """Wiring of one residual block (its 3×3 path and its shortcut)."""
    path = x.conv(3, stride, dilation)
    if kind == "basic":
        path = path.conv(3, 1, dilation)
    return path | x.conv(1, stride)


def resnet_spans(
    x: Span, depth: int, output_stride: int = 32, multi_grid: Sequence[int] | None = None
) -> list[Span]:
    """Wiring (:class:`Span`) of the outputs of ``layer1`` … ``layer4`` of :class:`ResNet`."""
    kind, _ = RESNET_LAYOUTS[depth]
    x = x.conv(7, 2).pool(3, 2)
    outs = []
    for blocks in resnet_plan(depth, output_stride, multi_grid):
        for stride, dilation in blocks:
            x = resnet_block_span(x, kind, stride, dilation)
        outs.append(x)
    return outs


def resnet_reach(
    depth: int, output_stride: int = 32, multi_grid: Sequence[int] | None = None
) -> dict[str, Reach]:
    """Receptive fields of the ``low`` and ``out`` features of :class:`ResNet`."""
    kind, _ = RESNET_LAYOUTS[depth]
    convs_per_block = 2 if kind == "basic" else 1  # 3×3 convolutions on the residual path
    r = Reach().conv(7, stride=2).conv(3, stride=2)
    low = None
    for stage, blocks in enumerate(resnet_plan(depth, output_stride, multi_grid)):
        for stride, dilation in blocks:
            r.conv(3, stride=stride, dilation=dilation)
            for _ in range(convs_per_block - 1):
                r.conv(3, dilation=dilation)
        if stage == 0:
            low = r.copy()
    assert low is not None
    return {"low": low, "out": r}
