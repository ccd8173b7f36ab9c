"""G-FRNet (Islam, Rochan, Bruce & Wang, Gated Feedback Refinement Network for Dense Image
Labeling, CVPR 2017).

Encoder: VGG-16 (13 convolutions, five 2×2 max poolings; stride 32); a 3×3
convolution on the last pooling gives the coarse prediction ``P_G`` (stride
32). The decoder refines it stage by stage back to the input resolution with

- *gate units* ``G_i`` (i = 5 … 1): the deeper encoder map ``f_{i+1}`` (a 3×3
  convolution, batch norm, ReLU, upsampled ×2) multiplies the shallower
  ``f_i`` (a 3×3 convolution, batch norm, ReLU) elementwise, so deeper context
  gates which local detail passes; ``f_i`` is the last convolution of VGG stage
  ``i`` (conv1_2 … conv5_3) and ``f_6`` the last pooling;
- *gated refinement units* ``RU_i``: the gate's output is reduced to the
  classes by a 3×3 convolution (batch norm), concatenated with the previous
  prediction upsampled ×2, and a 3×3 convolution gives this stage's prediction.

Deep supervision: ``P_G`` and the predictions of ``RU_5`` … ``RU_2`` (strides
32 … 2) are returned in training mode as auxiliary outputs, each with the
same weight as the final one (1.0), as the paper sums the stage losses.

Canonical: 3 channels in, 11 classes (CamVid); the paper states no parameter
count. Upsampling is the aligned bilinear of :func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.backbones.vgg import VGG16_LAYOUT
from models.deeplab import upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Islam et al., Gated Feedback Refinement Network for Dense Image Labeling (G-FRNet), CVPR 2017"


def conv_bn(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class VGGStages(nn.Module):
    """VGG-16's five stages (2×2 max pooling after each); returns conv1_2 … conv5_3 and pool5."""

    def __init__(self, in_channels: int, width_mult: float):
        super().__init__()
        stages: list[nn.Sequential] = []
        layers: list[nn.Module] = []
        cin = in_channels
        self.channels: list[int] = []
        for item in VGG16_LAYOUT:
            if item == "M":
                stages.append(nn.Sequential(*layers))
                self.channels.append(cin)
                layers = []
                continue
            cout = max(1, round(int(item) * width_mult))
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)
        return [*feats, self.pool(x)]


class GateUnit(nn.Module):
    """``conv(f_i) ⊙ upsample(conv(f_{i+1}))``, both 3×3 conv + BN + ReLU to ``f_i``'s channels."""

    def __init__(self, c_shallow: int, c_deep: int):
        super().__init__()
        self.shallow = conv_bn(c_shallow, c_shallow)
        self.deep = conv_bn(c_deep, c_shallow)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self.shallow(shallow) * upsample_aligned(self.deep(deep), 2)


class GatedRefinementUnit(nn.Module):
    """Reduce the gated map to the classes (3×3 conv + BN), concatenate the upsampled prediction, 3×3 conv."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.reduce = conv_bn(cin, num_classes, relu=False)
        self.refine = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)

    def forward(self, gated: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        return self.refine(torch.cat([self.reduce(gated), upsample_aligned(prediction, 2)], dim=1))


class GFRNet(nn.Module):
    """VGG-16 encoder, coarse prediction, five gate + refinement stages; deep supervision in training."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0):
        super().__init__()
        self.encoder = VGGStages(in_channels, width_mult)
        c = self.encoder.channels  # conv1_2 … conv5_3
        self.coarse = nn.Conv2d(c[4], num_classes, 3, padding=1)
        deeper = [*c[1:], c[4]]  # f_{i+1}: conv2_2 … conv5_3, then pool5 (conv5_3's channels)
        self.gates = nn.ModuleList(GateUnit(c[i], deeper[i]) for i in range(5))
        self.refine = nn.ModuleList(GatedRefinementUnit(c[i], num_classes) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        feats = self.encoder(x)  # f_1 … f_5, pool5
        prediction = self.coarse(feats[5])
        stages = [(prediction, 32)]
        for i in reversed(range(5)):
            gated = self.gates[i](feats[i], feats[i + 1])
            prediction = self.refine[i](gated, prediction)
            stages.append((prediction, 2**i))
        if not self.training:
            return prediction
        return {"out": prediction, "aux": [upsample_aligned(p, s) for p, s in stages[:-1]]}


def gfrnet_reach(config: Mapping[str, Any] | None = None) -> int:
    """Exact reach over the encoder, every gate's two inputs and the refinement chain."""

    def wiring(x: Span) -> Span:
        feats = []
        for item in VGG16_LAYOUT:
            if item == "M":
                feats.append(x)
                x = x.pool(2, 2)
            else:
                x = x.conv(3)
        feats.append(x)  # pool5
        prediction = x.conv(3)
        for i in reversed(range(5)):
            gated = feats[i].conv(3) | feats[i + 1].conv(3).upsample(2)
            prediction = (gated.conv(3) | prediction.upsample(2)).conv(3)
        return prediction

    return span_reach(wiring, 32)


register(
    ArchSpec(
        name="gfrnet",
        family="G-FRNet",
        factory=GFRNet,
        spatial_dims=2,
        downsampling=32,
        reach=gfrnet_reach,
        default_tile=512,
        paper=PAPER,
        defaults={"in_channels": 3, "num_classes": 11, "width_mult": 1.0},
        notes=(
            "VGG-16 encoder; gate units + gated refinement units; deep supervision at strides 32, 16, 8, "
            "4, 2 (weight 1 each) in training mode. The paper states no count."
        ),
        small={"width_mult": 1 / 16},
        aux_heads={"p_g": 1.0, "ru5": 1.0, "ru4": 1.0, "ru3": 1.0, "ru2": 1.0},
    )
)
