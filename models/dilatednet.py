"""Multi-scale context aggregation by dilated convolutions (Yu & Koltun, ICLR 2016).

*Front end*: VGG-16 with its last two poolings (and striding) removed, so the
output stride is 8; the ``conv5`` block is dilated by 2 and ``fc6`` (a 7×7
convolution to 4096 channels) by 4; ``fc7`` is 1×1 to 4096 (both with ReLU and
dropout 0.5), and a 1×1 convolution gives the class scores.

*Context module* on the ``C`` class scores: seven 3×3 layers with dilations
1, 1, 2, 4, 8, 16, 1, each followed by ReLU, and a final 1×1 layer to ``C``.
The *basic* module keeps ``C`` channels throughout; the *large* one widens to
2C, 2C, 4C, 8C, 16C, 32C, 32C. Both are initialised as the paper prescribes:
*basic* to the identity (each layer passes its input through), *large* to the
paper's generalised identity for unequal widths plus small Gaussian noise. The
scores are upsampled ×8 with a fixed bilinear filter (as in the paper's
reference model).

Canonical: front end + large context module, 3 channels in, 21 classes
(PASCAL VOC 2012); ``context="basic"`` or ``"none"`` select the others.
Deviations for tiled inference: the paper runs unpadded convolutions on a
reflection-padded input; here every convolution is zero-padded to keep the
size (same weights, same receptive field). The poolings removed from VGG-16 are
identities in place, so ``backbone.features.*`` keeps the ImageNet checkpoint
names. The paper states no parameter count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.backbones import VGG16
from models.fcn import FixedBilinearUpsampling, vgg16_chain
from models.receptive_field import chain_reach, conv, tconv
from models.registry import ArchSpec, register

PAPER = "Yu & Koltun, Multi-Scale Context Aggregation by Dilated Convolutions, ICLR 2016"
CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)
CONTEXTS = ("none", "basic", "large")
# Indices of pool4 and pool5 in VGG16.features.
_POOL4, _POOL5 = 23, 30


def _identity_init(layer: nn.Conv2d, noise: float) -> None:
    """The paper's identity initialisation, generalised to unequal widths (its eq. 4).

    Input channel ``a`` feeds output ``b`` through the centre tap with weight
    ``C / c_out`` where ``⌊a·C/c_in⌋ = ⌊b·C/c_out⌋`` (``C = min(c_in, c_out)``).
    """
    cout, cin, k, _ = layer.weight.shape
    width = min(cin, cout)
    device = layer.weight.device
    a = torch.arange(cin, device=device)
    b = torch.arange(cout, device=device)
    linked = (a[None, :] * width // cin) == (b[:, None] * width // cout)
    with torch.no_grad():
        if noise > 0:
            layer.weight.normal_(0.0, noise)
        else:
            layer.weight.zero_()
        centre = layer.weight[:, :, k // 2, k // 2]
        centre.copy_(torch.where(linked, torch.full_like(centre, width / cout), centre))
        layer.bias.zero_()


class ContextModule(nn.Sequential):
    """Seven dilated 3×3 layers with ReLU and a 1×1 output layer, identity-initialised."""

    def __init__(self, channels: int, kind: str):
        widths = [channels] * 7 if kind == "basic" else [channels * m for m in LARGE_WIDTHS]
        noise = 0.0 if kind == "basic" else 1e-3 / channels
        layers: list[nn.Module] = []
        cin = channels
        for width, dilation in zip(widths, CONTEXT_DILATIONS):
            layer = nn.Conv2d(cin, width, 3, padding=dilation, dilation=dilation)
            _identity_init(layer, noise)
            layers += [layer, nn.ReLU(inplace=True)]
            cin = width
        out = nn.Conv2d(cin, channels, 1)
        _identity_init(out, noise)
        super().__init__(*layers, out)


class DilatedNet(nn.Module):
    """Front end (dilated VGG-16, stride 8) + optional context module + fixed ×8 bilinear upsampling."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        context: str = "large",
        fc_channels: int = 4096,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        self.backbone = VGG16(in_channels, max(1, round(64 * width_mult)), output_stride=8, pool_kernel=2)
        self.backbone.features[_POOL4] = nn.Identity()  # removed, not replaced by a stride-1 pooling
        self.backbone.features[_POOL5] = nn.Identity()
        fc = max(1, round(fc_channels * width_mult))
        self.front = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, fc, 7, padding=12, dilation=4),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, fc, 1),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, num_classes, 1),  # final
        )
        self.context = ContextModule(num_classes, context) if context != "none" else nn.Identity()
        self.upsample = FixedBilinearUpsampling(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.front(self.backbone(x)["out"])
        return self.upsample(self.context(scores))


def dilatednet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach: three pooled VGG stages, conv4, dilated conv5 and fc6, context, ×8 upsampling."""
    chain = [*vgg16_chain(3), *[conv(3)] * 3, *[conv(3, dilation=2)] * 3, conv(7, dilation=4)]
    if config["context"] != "none":
        chain += [conv(3, dilation=d) for d in CONTEXT_DILATIONS]
    return chain_reach([*chain, tconv(16, 8, 4)], factor=8)


register(
    ArchSpec(
        name="dilatednet",
        family="DilatedNet",
        factory=DilatedNet,
        spatial_dims=2,
        downsampling=8,
        reach=dilatednet_reach,
        default_tile=512,
        paper=PAPER,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "context": "large",
            "fc_channels": 4096,
            "width_mult": 1.0,
            "dropout": 0.5,
        },
        notes=(
            "front end + large context module (context='basic' or 'none' for the others); "
            "the paper states no count. Same-padded instead of reflection-padded valid convolutions."
        ),
        small={"width_mult": 1 / 16},
    )
)
