"""LinkNet (Chaurasia & Culurciello, VCIP 2017): a ResNet-18 encoder linked to a light decoder.

Encoder: ResNet-18 (7×7 stride-2 convolution, 3×3 stride-2 max-pooling, four
stages of basic residual blocks; parameter names as in the ImageNet
checkpoints, ``backbone.layer1.0.conv1.weight`` …). Decoder block ``(m, n)``:
1×1 convolution ``m → m/4``, 3×3 stride-2 full (transposed) convolution
``m/4 → m/4``, 1×1 convolution ``m/4 → n``, each with batch norm and ReLU.
Each decoder block's output is *added* to the encoder output of the same
resolution (the "link"), and feeds the next block:
``d4 = dec4(e4) + e3``, ``d3 = dec3(d4) + e2``, ``d2 = dec2(d3) + e1``,
``d1 = dec1(d2)``. ResNet-18's first stage does not downsample, so ``dec1``'s
full convolution has stride 1 (as in the authors' released code). The final
block: 3×3 stride-2 full convolution to 32, 3×3 convolution 32 → 32, 2×2
stride-2 full convolution to the classes.
Canonical: 3 channels in, 12 classes (CamVid with void), 11.5M parameters
(the paper's figure).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.backbones import ResNet
from models.receptive_field import chain_reach, conv, tconv
from models.registry import ArchSpec, register

PAPER = "Chaurasia & Culurciello, LinkNet, VCIP 2017 (arXiv 1707.03718)"


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class DecoderBlock(nn.Sequential):
    """1×1 (m → m/4), 3×3 stride-2 full convolution, 1×1 (m/4 → n); BN + ReLU after each."""

    def __init__(self, m: int, n: int, stride: int = 2):
        inner = max(1, m // 4)
        super().__init__(
            nn.Conv2d(m, inner, 1, bias=False),
            *_bn_relu(inner),
            nn.ConvTranspose2d(inner, inner, 3, stride, 1, output_padding=stride - 1, bias=False),
            *_bn_relu(inner),
            nn.Conv2d(inner, n, 1, bias=False),
            *_bn_relu(n),
        )


class LinkNet(nn.Module):
    """ResNet-18 encoder, four decoder blocks summed into the encoder's laterals, final block."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0):
        super().__init__()
        width = max(1, round(64 * width_mult))
        self.backbone = ResNet(18, in_channels, width, output_stride=32)
        c1, c2, c3, c4 = (width * 2**i for i in range(4))
        self.decoder4 = DecoderBlock(c4, c3)
        self.decoder3 = DecoderBlock(c3, c2)
        self.decoder2 = DecoderBlock(c2, c1)
        self.decoder1 = DecoderBlock(c1, c1, stride=1)  # e1 is at stride 4 already
        half = max(1, c1 // 2)
        self.final = nn.Sequential(
            nn.ConvTranspose2d(c1, half, 3, 2, 1, output_padding=1, bias=False),
            *_bn_relu(half),
            nn.Conv2d(half, half, 3, padding=1, bias=False),
            *_bn_relu(half),
            nn.ConvTranspose2d(half, num_classes, 2, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        e1 = b.layer1(x)
        e2 = b.layer2(e1)
        e3 = b.layer3(e2)
        e4 = b.layer4(e3)
        d = self.decoder4(e4) + e3
        d = self.decoder3(d) + e2
        d = self.decoder2(d) + e1
        return self.final(self.decoder1(d))


def resnet18_chain(stages: int) -> list[tuple]:
    """Stem and the first ``stages`` ResNet-18 stages along their 3×3 residual paths."""
    chain = [conv(7, 2, 3), conv(3, 2, 1)]
    for stage in range(stages):
        chain += [conv(3, 1 if stage == 0 else 2, 1), conv(3), conv(3), conv(3)]
    return chain


def linknet_reach(config: Any = None) -> int:
    """Exact reach over the deepest path and the three lateral links."""
    dec = [conv(1), tconv(3, 2, 1), conv(1)]
    dec1 = [conv(1), tconv(3, 1, 1), conv(1)]
    final = [tconv(3, 2, 1), conv(3), tconv(2, 2, 0)]
    chains = [resnet18_chain(d) + dec * (d - 1) + dec1 + final for d in (1, 2, 3, 4)]
    return chain_reach(*chains, factor=32)


register(
    ArchSpec(
        name="linknet",
        family="LinkNet",
        factory=LinkNet,
        spatial_dims=2,
        downsampling=32,
        reach=linknet_reach,
        default_tile=512,
        paper=PAPER,
        paper_params=11_500_000,
        defaults={"in_channels": 3, "num_classes": 12, "width_mult": 1.0},
        notes="the paper's figure (11.5M) is given to 0.1M.",
        small={"width_mult": 1 / 16},
    )
)
