"""EncNet (Zhang, Dana, Shi, Zhang, Wang, Tyagi & Agrawal, Context Encoding for Semantic
Segmentation, CVPR 2018).

A dilated ResNet (output stride 8) feeds the *Context Encoding Module*: a 3×3
convolution 2048 → 512 (batch norm, ReLU), a 1×1 convolution with batch norm
and ReLU, then the *Encoding layer*: ``K = 32`` learned codewords ``d_k`` with
smoothing factors ``s_k``; every feature ``x_i`` is soft-assigned to the
codewords (``a_ik = softmax_k(−s_k‖x_i − d_k‖²)``) and the residuals are
aggregated, ``e_k = Σ_i a_ik (x_i − d_k)``, followed by batch norm and ReLU over
the codewords and their mean ``e``. A fully connected layer with a sigmoid turns
``e`` into channel scaling factors ``γ`` (the features are multiplied by them),
and a second fully connected layer turns ``e`` into per-image class-presence
logits, the *semantic encoding loss* (SE-loss, weight 0.2), returned in
training mode as ``out["se"]``. Dropout 0.1 and a 1×1 classifier follow; the
logits are upsampled ×8. As in the authors' training, an FCN auxiliary head on
``layer3`` (3×3 convolution to 256, 1×1 classifier) is returned in training
mode too (weight 0.2).

Canonical: ResNet-101, 3 channels in, 21 classes (PASCAL VOC / Context use 21
/ 59); the paper states no parameter count. Deviation: the paper's deep stem
and its second encoding module on stage 3 are left out (the standard stem
loads ImageNet checkpoints; the stage-3 module only adds an SE-loss).

The Encoding layer pools over the whole map, so the network is not
fully convolutional.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.backbones import make_backbone
from models.backbones.resnet import resnet_depth, resnet_spans
from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, GlobalContext, register

PAPER = "Zhang et al., Context Encoding for Semantic Segmentation (EncNet), CVPR 2018"


class Encoding(GlobalContext):
    """The Encoding layer: ``(N, C, H, W)`` → aggregated residuals ``(N, K, C)`` over all positions."""

    def __init__(self, channels: int, codewords: int):
        super().__init__()
        std = 1.0 / (codewords * channels) ** 0.5
        self.codewords = nn.Parameter(torch.empty(codewords, channels).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(codewords).uniform_(-1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        feats = x.reshape(n, c, -1).transpose(1, 2)  # (N, HW, C)
        d = self.codewords
        sq = (feats.square().sum(-1, keepdim=True) - 2 * feats @ d.t() + d.square().sum(-1)).clamp_min(0)
        assign = torch.softmax(self.scale * sq, dim=2)  # (N, HW, K)
        return assign.transpose(1, 2) @ feats - assign.sum(1).unsqueeze(-1) * d


class ContextEncoding(nn.Module):
    """1×1 conv, Encoding, BN + ReLU + mean → channel scaling (sigmoid) and the SE-loss logits."""

    def __init__(self, channels: int, codewords: int, num_classes: int):
        super().__init__()
        self.reduce = ConvBNReLU(channels, channels, 1)
        self.encoding = Encoding(channels, codewords)
        self.norm = nn.Sequential(nn.BatchNorm1d(codewords), nn.ReLU(inplace=True))
        self.attend = nn.Linear(channels, channels)
        self.se = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        e = self.norm(self.encoding(x)).mean(dim=1)
        gamma = torch.sigmoid(self.attend(e))
        return x * gamma[:, :, None, None], self.se(e)


class EncHead(nn.Module):
    """3×3 conv to ``channels``, context encoding, dropout, 1×1 classifier; also the SE logits."""

    def __init__(self, cin: int, channels: int, codewords: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv = ConvBNReLU(cin, channels, 3)
        self.encode = ContextEncoding(channels, codewords, num_classes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, se = self.encode(self.conv(x))
        return self.classifier(y), se


def fcn_head(cin: int, mid: int, num_classes: int, dropout: float = 0.1) -> nn.Sequential:
    """The FCN auxiliary head: 3×3 conv + BN + ReLU, dropout, 1×1 classifier."""
    return nn.Sequential(ConvBNReLU(cin, mid, 3), nn.Dropout2d(dropout), nn.Conv2d(mid, num_classes, 1))


class EncNet(nn.Module):
    """Dilated ResNet (stride 8) + context encoding head; FCN aux head on layer3 and SE logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        head_channels: int = 512,
        codewords: int = 32,
        aux_channels: int = 256,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"EncNet uses a ResNet backbone, not {backbone!r}")
        self.backbone = make_backbone(backbone, in_channels, 8, width_mult)
        c3, c4 = self.backbone.stage_channels[2:]
        mid = max(1, round(head_channels * width_mult))
        self.head = EncHead(c4, mid, codewords, num_classes, dropout)
        self.aux = fcn_head(c3, max(1, round(aux_channels * width_mult)), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        _, _, c3, c4 = self.backbone.stages(x)
        logits, se = self.head(c4)
        out = upsample_aligned(logits, 8)
        if not self.training:
            return out
        return {"out": out, "aux": [upsample_aligned(self.aux(c3), 8)], "se": se}


def encnet_reach(config: Mapping[str, Any]) -> int:
    """Local reach: backbone, the head's 3×3 convolution, ×8 upsampling."""

    def wiring(x: Span) -> Span:
        return resnet_spans(x, resnet_depth(str(config["backbone"])), 8)[3].conv(3).upsample(8)

    return span_reach(wiring, 8)


register(
    ArchSpec(
        name="encnet",
        family="EncNet",
        factory=EncNet,
        spatial_dims=2,
        downsampling=8,
        reach=encnet_reach,
        default_tile=512,
        paper=PAPER,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet101",
            "head_channels": 512,
            "codewords": 32,
            "aux_channels": 256,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes=(
            "the Encoding layer (a learned global pooling over all positions) makes each output depend "
            "on the whole tile; reach covers the local part only. SE-loss (weight 0.2) and FCN auxiliary "
            "head on layer3 (0.2) in training mode. Standard ResNet stem; no stage-3 encoding module. "
            "The paper states no count."
        ),
        small={"width_mult": 1 / 16, "codewords": 4, "backbone": "resnet50"},
        aux_heads={"layer3": 0.2},
        se_loss=0.2,
    )
)
