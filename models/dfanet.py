"""DFANet (Li, Xiong, Fan & Sun, DFANet: Deep Feature Aggregation for Real-Time Semantic
Segmentation, CVPR 2019), variant DFANet A.

Backbone *Xception A* (Table 1 of the paper): a 3×3 stride-2 convolution to 8
channels, then ``enc2`` (4 blocks, 48 channels), ``enc3`` (6 blocks, 96) and
``enc4`` (4 blocks, 192), each stage's first block striding 2. A block is
three depthwise-separable 3×3 convolutions (channels ``c/4, c/4, c``; batch
norm and ReLU) with a shortcut (1×1 convolution where the shape changes). The
*fc attention* keeps the classifier of the ImageNet network: global average
pooling, a fully connected layer to 1000, a 1×1 convolution back to 192, a
sigmoid, multiplying the ``enc4`` features.

*Deep feature aggregation*: three copies of the backbone. *Network-level
reuse*: the fc-attention output of one copy, upsampled ×4, is concatenated with
that copy's ``enc2`` output and is the next copy's input (at its ``enc2``).
*Stage-level reuse*: every later copy's ``enc3`` and ``enc4`` also read the
previous copy's output of the same stage (concatenated). The copies work at
strides 4–16, 8–32 and 16–64.

*Decoder*: the three ``enc2`` outputs (strides 4, 8, 16) are brought to 32
channels (1×1 convolution, batch norm, ReLU), upsampled to stride 4 and summed;
so are the three fc-attention outputs (strides 16, 32, 64); a 1×1 classifier on
their sum, upsampled ×4.

Canonical: 3 channels in, 19 classes (Cityscapes). The paper states 7.8M
parameters for DFANet A, but the layers its Table 1 lists total 1.83M (the
thin separable convolutions and the three fc-attention layers); the table shows
both, the parameter test records the gap. The deepest copy makes the
downsampling factor 64. Upsampling is the aligned bilinear of
:func:`models.deeplab.upsample_aligned`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.deeplab import ConvBNReLU, upsample_aligned
from models.receptive_field import Span, span_reach
from models.registry import ArchSpec, register

PAPER = "Li et al., DFANet: Deep Feature Aggregation for Real-Time Semantic Segmentation, CVPR 2019"


class SeparableConv(nn.Sequential):
    """3×3 depthwise (strided) conv → BN → 1×1 pointwise conv → BN → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class XceptionABlock(nn.Module):
    """Three separable convs (``c/4, c/4, c``; the first may stride) plus a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        inner = max(1, cout // 4)
        self.body = nn.Sequential(
            SeparableConv(cin, inner, stride), SeparableConv(inner, inner), SeparableConv(inner, cout)
        )
        self.shortcut = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(
        *(XceptionABlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(blocks))
    )


class FCAttention(nn.Module):
    """Global pooling → FC (to the ImageNet classes) → 1×1 conv → sigmoid, scaling the input's channels."""

    def __init__(self, channels: int, hidden: int = 1000):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, hidden)
        self.conv = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(self.pool(x).flatten(1))[:, :, None, None]
        return x * torch.sigmoid(self.conv(w))


class XceptionA(nn.Module):
    """One backbone copy: ``enc2``–``enc4`` and fc attention; later copies read the previous one."""

    def __init__(self, cin: int, channels: Sequence[int], blocks: Sequence[int], reuse: bool, hidden: int):
        super().__init__()
        c2, c3, c4 = channels
        self.enc2 = _stage(cin, c2, blocks[0])
        self.enc3 = _stage(c2 + (c3 if reuse else 0), c3, blocks[1])
        self.enc4 = _stage(c3 + (c4 if reuse else 0), c4, blocks[2])
        self.attention = FCAttention(c4, hidden)
        self.reuse = reuse

    def forward(self, x: torch.Tensor, previous: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        e2 = self.enc2(x)
        e3 = self.enc3(e2 if previous is None else torch.cat([e2, previous[1]], dim=1))
        e4 = self.enc4(e3 if previous is None else torch.cat([e3, previous[2]], dim=1))
        return [e2, e3, e4, self.attention(e4)]


class DFANet(nn.Module):
    """Three aggregated Xception A copies (strides 4–64) and the summing decoder, upsampled ×4."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (48, 96, 192),
        blocks: Sequence[int] = (4, 6, 4),
        stem_channels: int = 8,
        decoder_channels: int = 32,
        hidden: int = 1000,
        width_mult: float = 1.0,
    ):
        super().__init__()
        scale = lambda c: max(1, round(int(c) * width_mult))  # noqa: E731
        chans = [scale(c) for c in channels]
        stem = scale(stem_channels)
        self.stem = ConvBNReLU(in_channels, stem, 3, stride=2)
        blocks = [int(b) for b in blocks]
        self.copies = nn.ModuleList(
            [XceptionA(stem, chans, blocks, False, hidden)]
            + [XceptionA(chans[0] + chans[2], chans, blocks, True, hidden) for _ in range(2)]
        )
        dec = scale(decoder_channels)
        self.low = nn.ModuleList(ConvBNReLU(chans[0], dec, 1) for _ in range(3))
        self.high = nn.ModuleList(ConvBNReLU(chans[2], dec, 1) for _ in range(3))
        self.classifier = nn.Conv2d(dec, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.copies[0](self.stem(x))
        outs = [feats]
        for copy in self.copies[1:]:
            x = torch.cat([feats[0], upsample_aligned(feats[3], 4)], dim=1)
            feats = copy(x, feats)
            outs.append(feats)
        y = sum(upsample_aligned(conv(f[0]), 2**i) for i, (conv, f) in enumerate(zip(self.low, outs)))
        y = y + sum(
            upsample_aligned(conv(f[3]), 4 * 2**i) for i, (conv, f) in enumerate(zip(self.high, outs))
        )
        return upsample_aligned(self.classifier(y), 4)


def dfanet_reach(config: Mapping[str, Any]) -> int:
    """Exact reach over the three copies, both kinds of reuse and the decoder (fc attention left out)."""
    blocks = [int(b) for b in config["blocks"]]

    def stage(x: Span, n: int) -> Span:
        for i in range(n):
            stride = 2 if i == 0 else 1
            x = x.conv(3, stride).conv(3).conv(3) | x.conv(1, stride)
        return x

    def copy(x: Span, previous: list[Span] | None) -> list[Span]:
        e2 = stage(x, blocks[0])
        e3 = stage(e2 if previous is None else e2 | previous[1], blocks[1])
        e4 = stage(e3 if previous is None else e3 | previous[2], blocks[2])
        return [e2, e3, e4]

    def wiring(x: Span) -> Span:
        feats = copy(x.conv(3, 2), None)
        outs = [feats]
        for _ in range(2):
            feats = copy(feats[0] | feats[2].upsample(4), feats)
            outs.append(feats)
        y = outs[0][0]
        for i, f in enumerate(outs):
            y = y | f[0].upsample(2**i) | f[2].upsample(4 * 2**i)
        return y.upsample(4)

    return span_reach(wiring, 64)


register(
    ArchSpec(
        name="dfanet",
        family="DFANet",
        factory=DFANet,
        spatial_dims=2,
        downsampling=64,
        reach=dfanet_reach,
        default_tile=1024,
        paper=PAPER,
        fully_convolutional=False,
        paper_params=7_800_000,
        defaults={
            "in_channels": 3,
            "num_classes": 19,
            "channels": (48, 96, 192),
            "blocks": (4, 6, 4),
            "stem_channels": 8,
            "decoder_channels": 32,
            "hidden": 1000,
            "width_mult": 1.0,
        },
        notes=(
            "DFANet A; the fc attention (global average pooling) makes each output depend on the whole "
            "tile; reach covers the local part only. The paper's 7.8M disagrees with the layers of its "
            "Table 1; channels=(32, 64, 128) gives Xception B (DFANet B)."
        ),
        small={"width_mult": 1 / 4, "hidden": 16, "blocks": (1, 1, 1)},
    )
)
