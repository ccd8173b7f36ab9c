"""PSPNet (Zhao, Shi, Qi, Wang & Jia, Pyramid Scene Parsing Network, CVPR 2017).

A dilated ResNet (output stride 8: ``layer3`` dilated 2, ``layer4`` dilated 4)
feeds the *pyramid pooling module*: the 2048-channel map is average-pooled to
1×1, 2×2, 3×3 and 6×6 bins, each reduced by a 1×1 convolution to 1/4 of the
channels (512) with batch norm and ReLU, upsampled bilinearly back to the map
and concatenated with it (4096 channels); a 3×3 convolution to 512 with batch
norm, ReLU and dropout 0.1 and a 1×1 classifier follow, and the logits are
upsampled ×8 to the input.

The *auxiliary loss* (deep supervision) reads ``layer3`` (res4b22 of
ResNet-101): 3×3 convolution 1024 → 256, batch norm, ReLU, dropout 0.1, 1×1
classifier. The network returns it in training mode as
``{"out": logits, "aux": [aux_logits]}`` (weight 0.4 in the paper, recorded
in the registry's ``aux_heads``); in eval mode the head is not run.

Canonical: ResNet-101, 3 channels in, 21 classes (PASCAL VOC 2012). Deviation:
the paper's ResNets have a deep stem (three 3×3 convolutions instead of the
7×7); here the standard ImageNet ResNet stem is used so that common
checkpoints load (``backbone.*``). The paper states no parameter count.

The pyramid pooling bins see the whole input, so the network is not
translation-local (``fully_convolutional=False``) and tiled outputs depend on
the tile; the declared reach covers the local path only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import backbone_reach, make_backbone
from models.deeplab import ConvBNReLU, upsample_aligned
from models.registry import ArchSpec, register

PAPER = "Zhao et al., Pyramid Scene Parsing Network (PSPNet), CVPR 2017"


class PyramidPooling(nn.Module):
    """Average-pool to each bin size, 1×1 conv + BN + ReLU, upsample, concatenate with the input."""

    def __init__(self, cin: int, bins: Sequence[int], reduction: int):
        super().__init__()
        cout = max(1, cin // reduction)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(b)), ConvBNReLU(cin, cout, 1)) for b in bins
        )
        self.out_channels = cin + len(bins) * cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


def _head(cin: int, mid: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(cin, mid, 3), nn.Dropout2d(dropout), nn.Conv2d(mid, num_classes, 1))


class PSPNet(nn.Module):
    """Dilated ResNet + pyramid pooling module + auxiliary head on ``layer3`` (training only)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        aux_channels: int = 256,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"PSPNet uses a ResNet backbone, not {backbone!r}")
        self.backbone = make_backbone(backbone, in_channels, 8, width_mult)
        c4 = self.backbone.out_channels
        self.ppm = PyramidPooling(c4, bins, reduction=len(bins))
        self.head = _head(
            self.ppm.out_channels, max(1, round(head_channels * width_mult)), num_classes, dropout
        )
        c3 = c4 // 2
        self.aux = _head(c3, max(1, round(aux_channels * width_mult)), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer3(b.layer2(b.layer1(x)))
        out = upsample_aligned(self.head(self.ppm(b.layer4(c3))), 8)
        if not self.training:
            return out
        return {"out": out, "aux": [upsample_aligned(self.aux(c3), 8)]}


def pspnet_reach(config: Mapping[str, Any]) -> int:
    """Local reach: backbone, the head's 3×3 convolution, aligned ×8 upsampling."""
    return backbone_reach(str(config["backbone"]), 8)["out"].conv(3).upsample(8).reach


register(
    ArchSpec(
        name="pspnet",
        family="PSPNet",
        factory=PSPNet,
        spatial_dims=2,
        downsampling=8,
        reach=pspnet_reach,
        default_tile=512,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet101",
            "bins": (1, 2, 3, 6),
            "head_channels": 512,
            "aux_channels": 256,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes=(
            "pyramid pooling (bins 1/2/3/6, global average pooling) makes each output depend on the "
            "whole tile; reach covers the local part only. The paper states no count. Standard "
            "ResNet stem instead of the paper's deep stem. Auxiliary head on layer3 (loss weight 0.4)."
        ),
        small={"width_mult": 1 / 16},
        aux_heads={"layer3": 0.4},
    )
)
