"""VGG-16 convolutional trunk (Simonyan & Zisserman, ICLR 2015), optionally atrous.

Parameter names follow the common ImageNet checkpoints (``features.0.weight`` …
``features.28.bias``; the fully connected ``classifier.*`` is not part of the
trunk), so such a checkpoint loads with
:func:`models.backbones.load_backbone_weights`.

DeepLab v1/v2 (Chen et al.) turn the trunk into a dense feature extractor: 3×3
poolings with stride 2 and padding 1, the last two poolings with stride 1, and
the third convolution block's successors (conv5_x) dilated by 2, so the output
stride is 8 instead of 32 while every pretrained filter keeps its meaning.
"""

from __future__ import annotations

import torch
from torch import nn

from models.receptive_field import Reach

# Channels of the 13 convolutions ("M": a pooling), as in configuration D of the paper.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


def _stage_plan(output_stride: int) -> list[tuple[int, int]]:
    """(pooling stride, dilation of the convolutions that follow) for each of the 5 poolings."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"VGG-16 output_stride must be 8, 16 or 32, got {output_stride}")
    plan = []
    stride_so_far, dilation = 1, 1
    for _ in range(5):
        if stride_so_far < output_stride:
            stride_so_far *= 2
            plan.append((2, dilation))
        else:
            dilation *= 2  # the pooling no longer strides: dilate what follows instead
            plan.append((1, dilation))
    return plan


class VGG16(nn.Module):
    """The 13 convolutions and 5 poolings of VGG-16; ``forward`` returns ``{"out": features}``.

    ``width`` scales every layer's channels (64 is the paper's); ``pool_kernel``
    is 2 (the paper) or 3 (DeepLab: 3×3, padding 1). Poolings that do not stride
    are always 3×3 with padding 1, so they keep the size.
    """

    IGNORED_PREFIXES: tuple[str, ...] = ("classifier.",)

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        output_stride: int = 32,
        pool_kernel: int = 2,
    ):
        super().__init__()
        if pool_kernel not in (2, 3):
            raise ValueError("pool_kernel must be 2 or 3")
        plan = _stage_plan(output_stride)
        layers: list[nn.Module] = []
        cin, dilation, stage = in_channels, 1, 0
        for item in VGG16_LAYOUT:
            if item == "M":
                stride, dilation = plan[stage]
                if stride == 2 and pool_kernel == 2:
                    layers.append(nn.MaxPool2d(2, stride=2))
                else:
                    layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
                stage += 1
                continue
            cout = int(item) * width // 64
            layers.append(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_channels = cin
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features(x)}


def vgg16_reach(output_stride: int = 32, pool_kernel: int = 2) -> Reach:
    """Receptive field of :class:`VGG16`'s output (``pool_kernel=3`` only: centred poolings)."""
    if pool_kernel != 3:
        raise ValueError("reach is computed for centred (3×3) poolings only")
    plan = _stage_plan(output_stride)
    r = Reach()
    dilation, stage = 1, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            stride, dilation = plan[stage]
            r.conv(3, stride=stride)
            stage += 1
        else:
            r.conv(3, dilation=dilation)
    return r
