"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017; arXiv 1511.00561, 2015).

Encoder: the 13 convolutions of VGG-16 (no fully connected layers), each
followed by batch norm and ReLU, in five stages closed by 2×2 max-poolings
that remember their argmax *indices*. Decoder: the mirror image; each stage
first max-unpools with the indices of the matching encoder pooling (a sparse
map: every value returns to the position it was pooled from), then densifies
it with 3×3 convolution + batch norm + ReLU layers whose channels mirror the
encoder's (512 512 512 | 512 512 256 | 256 256 128 | 128 64 | 64 classes). The
last convolution produces the class scores directly (no batch norm or ReLU), as
in the paper's reference network. Canonical: 3 input channels, 11 classes
(CamVid), 29.5M parameters (the paper's figure).

The encoder keeps the parameter names of the common VGG-16-BN ImageNet
checkpoints (``backbone.features.0.weight``, ``backbone.features.1.running_mean`` …).
SegNet's decoder carries no encoder features, only pooling indices, so its
receptive field is the encoder's plus the decoder's convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.receptive_field import chain_reach, conv, unpool
from models.registry import ArchSpec, register

PAPER = "Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017 (arXiv 1511.00561)"
ENCODER_PLAN = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Decoder stages from the deepest; the final ``0`` is the classifier (replaced by num_classes).
DECODER_PLAN = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 0))


class VGG16BNEncoder(nn.Module):
    """VGG-16 with batch norm, poolings returning indices; names as in VGG-16-BN checkpoints."""

    IGNORED_PREFIXES: tuple[str, ...] = ("classifier.",)

    def __init__(self, in_channels: int, width_mult: float):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage in ENCODER_PLAN:
            for channels in stage:
                cout = _scaled(channels, width_mult)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2, 2, return_indices=True))
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features at stride 32 and the pooling indices of each stage (shallowest first)."""
        indices = []
        for layer in self.features:
            x = layer(x)
            if isinstance(x, tuple):  # a pooling: (pooled, argmax indices)
                x, idx = x
                indices.append(idx)
        return x, indices


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


class SegNet(nn.Module):
    """VGG-16-BN encoder, index-unpooling decoder, 3×3 classifier at full resolution."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0):
        super().__init__()
        self.backbone = VGG16BNEncoder(in_channels, width_mult)
        self.unpool = nn.MaxUnpool2d(2, 2)
        stages = []
        cin = self.backbone.out_channels
        for plan in DECODER_PLAN:
            layers: list[nn.Module] = []
            for channels in plan:
                if channels == 0:
                    layers.append(nn.Conv2d(cin, num_classes, 3, padding=1))
                    continue
                cout = _scaled(channels, width_mult)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, indices = self.backbone(x)
        for stage, idx in zip(self.decoder, reversed(indices)):
            x = stage(self.unpool(x, idx))
        return x


def segnet_reach(config: Any = None) -> int:
    """Exact reach: the encoder's convolutions and poolings, then unpooling and the decoder's."""
    chain: list[tuple] = []
    for stage in ENCODER_PLAN:
        chain += [conv(3)] * len(stage) + [conv(2, 2, 0)]
    for stage in DECODER_PLAN:
        chain += [unpool(2)] + [conv(3)] * len(stage)
    return chain_reach(chain, factor=32)


register(
    ArchSpec(
        name="segnet",
        family="SegNet",
        factory=SegNet,
        spatial_dims=2,
        downsampling=32,
        reach=segnet_reach,
        default_tile=512,
        paper=PAPER,
        paper_params=29_500_000,
        defaults={"in_channels": 3, "num_classes": 11, "width_mult": 1.0},
        notes="the paper's figure (29.5M) is given to 0.1M. Decoder upsamples with the encoder's "
        "max-pooling indices; no skip features.",
        small={"width_mult": 1 / 16},
    )
)
