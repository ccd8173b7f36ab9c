"""Fully convolutional networks FCN-32s, FCN-16s, FCN-8s (Long, Shelhamer & Darrell, CVPR 2015).

VGG-16 (configuration D, 2×2 poolings, output stride 32) whose fully connected
layers become convolutions: ``fc6`` a 7×7 convolution to 4096 channels, ``fc7``
1×1 to 4096 (each followed by ReLU and dropout 0.5), then ``score_fr`` 1×1 to
the classes.

- **FCN-32s** upsamples the stride-32 scores ×32 with a fixed bilinear filter.
- **FCN-16s** upsamples them ×2 with a *learned* transposed convolution
  initialised to bilinear interpolation, adds ``score_pool4`` (a 1×1 score
  layer on pool4, zero-initialised as in the paper so training starts from the
  32s net), and upsamples the sum ×16 with a fixed bilinear filter.
- **FCN-8s** fuses ``score_pool3`` the same way at stride 8, then ×8 bilinear.

The learned 2× upsamplings are full ``classes → classes`` transposed
convolutions (4×4, stride 2) with bilinear weights on the diagonal, as in the
paper's reference networks; the final upsamplings are fixed (no parameters),
so the canonical counts are the paper's Table 1 figure for FCN-VGG16 (134M)
plus the few skip layers.

Deviations, for tiled inference: the reference networks pad the input by 100
pixels and crop the upsampled maps back with per-layer offsets; here every 3×3
convolution is zero-padded by 1, ``fc6`` by 3, and each upsampling is padded by
half its stride, which places every upsampled score exactly over the pixels its
pooling window covered (no crop offsets, no 100-pixel margin). Pretrained VGG
convolutions load by name (``backbone.features.*``); converting the ImageNet
``classifier.0``/``classifier.3`` matrices into ``fc6``/``fc7`` is left to the
user (a reshape to 4096×512×7×7 and 4096×4096×1×1).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import VGG16
from models.receptive_field import chain_reach, conv, tconv
from models.registry import ArchSpec, register

PAPER = "Long, Shelhamer & Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"
# Indices into VGG16.features after pool3, pool4 (exclusive ends of the slices).
_POOL3, _POOL4 = 17, 24
# Convolutions per VGG-16 stage, each stage closed by a 2×2 pooling.
VGG16_STAGES = (2, 2, 3, 3, 3)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The (size × size) bilinear interpolation filter used to initialise upsamplings."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return taps[:, None] * taps[None, :]


def bilinear_upsampling(channels: int, factor: int, learned: bool) -> nn.Module:
    """×``factor`` upsampling aligned with 2×2-pooled features (kernel 2f, stride f, padding f/2).

    ``learned``: a full transposed convolution initialised to bilinear on the
    diagonal. Otherwise a fixed per-channel bilinear filter without parameters.
    """
    if learned:
        up = nn.ConvTranspose2d(channels, channels, 2 * factor, factor, factor // 2, bias=False)
        with torch.no_grad():
            up.weight.zero_()
            kernel = bilinear_kernel(2 * factor).to(up.weight.device)
            for c in range(channels):
                up.weight[c, c] = kernel
        return up
    return FixedBilinearUpsampling(channels, factor)


class FixedBilinearUpsampling(nn.Module):
    """Per-channel bilinear ×``factor`` upsampling as a fixed transposed convolution."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.channels, self.factor = channels, factor
        kernel = bilinear_kernel(2 * factor).expand(channels, 1, 2 * factor, 2 * factor).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        return F.conv_transpose2d(
            x, kernel, stride=self.factor, padding=self.factor // 2, groups=self.channels
        )


class FCN(nn.Module):
    """FCN-32s / 16s / 8s on VGG-16 (``stride`` 32, 16 or 8 is the finest fused skip)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stride: int = 8,
        fc_channels: int = 4096,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, got {stride}")
        self.stride = stride
        self.backbone = VGG16(in_channels, max(1, round(64 * width_mult)), output_stride=32, pool_kernel=2)
        c5 = self.backbone.out_channels
        fc = max(1, round(fc_channels * width_mult))
        self.fc = nn.Sequential(
            nn.Conv2d(c5, fc, 7, padding=3),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, fc, 1),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if stride <= 16:
            self.upscore2 = bilinear_upsampling(num_classes, 2, learned=True)
            self.score_pool4 = _zero_conv(c5, num_classes)
        if stride == 8:
            self.upscore_pool4 = bilinear_upsampling(num_classes, 2, learned=True)
            self.score_pool3 = _zero_conv(c5 // 2, num_classes)
        self.upscore_final = bilinear_upsampling(num_classes, stride, learned=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.features
        pool3 = features[:_POOL3](x)
        pool4 = features[_POOL3:_POOL4](pool3)
        pool5 = features[_POOL4:](pool4)
        score = self.score_fr(self.fc(pool5))
        if self.stride <= 16:
            score = self.upscore2(score) + self.score_pool4(pool4)
        if self.stride == 8:
            score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore_final(score)


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 1×1 score layer initialised to zero (the paper's initialisation of skip scores)."""
    layer = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def vgg16_chain(stages: int = 5) -> list[tuple]:
    """The first ``stages`` stages of VGG-16 (3×3 convolutions, 2×2 poolings) as a reach chain."""
    chain: list[tuple] = []
    for n in VGG16_STAGES[:stages]:
        chain += [conv(3)] * n + [conv(2, 2, 0)]
    return chain


def fcn_reach(stride: int) -> int:
    """Exact receptive-field reach of FCN-``stride``s (every skip path, every phase)."""
    deep = [*vgg16_chain(5), conv(7), conv(1)]
    final = tconv(2 * stride, stride, stride // 2)
    if stride == 32:
        return chain_reach([*deep, final], factor=32)
    up2 = tconv(4, 2, 1)
    if stride == 16:
        return chain_reach([*deep, up2, final], [*vgg16_chain(4), final], factor=32)
    return chain_reach(
        [*deep, up2, up2, final], [*vgg16_chain(4), up2, final], [*vgg16_chain(3), final], factor=32
    )


_NOTES = {
    32: "the paper's Table 1 states 134M for FCN-VGG16 (the 32s net). ",
    16: "the paper states 134M for FCN-VGG16 (the 32s net); the pool4 skip adds 18k. ",
    8: "the paper states 134M for FCN-VGG16 (the 32s net); the pool3/pool4 skips add 31k. ",
}

for _stride in (32, 16, 8):

    def _reach(config: Mapping[str, Any], stride: int = _stride) -> int:
        return fcn_reach(stride)

    register(
        ArchSpec(
            name=f"fcn{_stride}s",
            family="FCN",
            factory=partial(FCN, stride=_stride),
            spatial_dims=2,
            downsampling=32,
            reach=_reach,
            default_tile=512,
            paper=PAPER,
            paper_params=134_000_000,
            defaults={
                "in_channels": 3,
                "num_classes": 21,
                "fc_channels": 4096,
                "width_mult": 1.0,
                "dropout": 0.5,
            },
            notes=_NOTES[_stride]
            + "Final upsampling fixed bilinear (no parameters); same-padded, no 100-pixel input margin.",
            small={"width_mult": 1 / 16},
        )
    )
