"""DeepLab v1, v2, v3 and v3+ (Chen, Papandreou, Kokkinos, Murphy, Yuille, Schroff, Adam, Zhu).

- **v1** (ICLR 2015), *DeepLab-LargeFOV*: VGG-16 made atrous (output stride 8),
  ``fc6`` a 3×3 convolution with rate 12 and 1024 channels, ``fc7`` 1×1 with
  1024, ``fc8`` 1×1 to the classes (20.5M parameters, paper's Table 2).
- **v2** (TPAMI 2017), *ASPP-L*: four parallel branches at rates 6, 12, 18, 24
  on the same VGG-16 features, each its own ``fc6``-``fc7``-``fc8``, summed. With a
  ResNet backbone (``backbone="resnet101"``) each branch is a single 3×3
  convolution to the classes, as in the paper's ResNet-101 model.
- **v3** (arXiv 2017): ResNet-101 at output stride 16 (or 8) with multi-grid
  (1, 2, 4) in the last stage, and ASPP with batch norm: a 1×1 branch, three 3×3
  branches at rates 6, 12, 18 (doubled at stride 8) and an *image pooling*
  branch (global average → 1×1 conv → broadcast), concatenated and projected
  to 256 channels, then a 1×1 classifier.
- **v3+** (ECCV 2018): the v3 encoder plus a decoder: the ASPP output is
  upsampled ×4 and concatenated with the backbone's stride-4 features reduced
  to 48 channels, refined by two 3×3 convolutions (256 channels) and classified.
  Backbone aligned Xception-65 by default, or ResNet-18…101 / MobileNetV2; with
  ``separable=True`` (the paper's Xception model) ASPP's and the decoder's 3×3
  convolutions are depthwise-separable.
- **DUpsampling** (Tian, He, Shen & Yan, Decoders Matter for Semantic
  Segmentation: Data-Dependent Decoding Enables Flexible Feature Aggregation,
  CVPR 2019) as the v3+ decoder option ``decoder="dupsampling"``: the stride-4
  features (reduced to 48 channels) are *downsampled* to the encoder's output
  stride ``r`` (bilinear) and fused with the ASPP output there by the two 3×3
  convolutions; a 1×1 convolution (no bias) then projects each pixel to
  ``r² · classes`` values, rearranged into the ``r × r`` block of logits it
  stands for (data-dependent upsampling; the paper fits this projection to
  label patches first, here it is learned with the network), divided by a
  learned softmax temperature (initialised to 1).

All four upsample their logits to the input size inside the network, so the
wrapper's contract (logits as large as the input) holds. Upsampling is bilinear
and *aligned*: a feature at stride ``s`` and index ``i`` is centred over input
pixel ``s · i`` (every strided layer here is centred), and the interpolation
honours that, so logits are not shifted by ``(s - 1) / 2`` pixels, and the
network commutes with shifts by multiples of its stride (tiles on the global
grid agree where they overlap).

The image-pooling branch of v3/v3+ sees the whole input: those networks are not
translation-local (``fully_convolutional=False``) and their tiled output depends
on the tile; ``image_pooling=False`` removes the branch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import backbone_reach, make_backbone
from models.receptive_field import Reach, Span, span_reach
from models.registry import ArchSpec, register

PAPER_V1 = "Chen et al., DeepLab v1 (LargeFOV), ICLR 2015"
PAPER_V2 = "Chen et al., DeepLab v2 (ASPP-L), TPAMI 2017"
PAPER_V3 = "Chen et al., Rethinking Atrous Convolution (DeepLab v3), arXiv 1706.05587, 2017"
PAPER_V3P = "Chen et al., Encoder-Decoder with Atrous Separable Convolution (DeepLab v3+), ECCV 2018"
IMAGE_POOLING_NOTE = (
    "image pooling (global average) makes each output depend on the whole tile; "
    "reach covers the local part only; image_pooling=False makes it translation-local."
)


def upsample_aligned(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear ×``factor`` upsampling that keeps feature ``i`` over output pixel ``factor · i``.

    The map is extended by one replicated pixel at the far end, interpolated with
    corners aligned (so output ``j`` reads source ``j / factor`` exactly), and
    cropped to ``factor`` times its original size.
    """
    if factor == 1:
        return x
    size = x.shape[2:]
    x = F.pad(x, [0, 1] * len(size), mode="replicate")
    x = F.interpolate(x, size=[n * factor + 1 for n in size], mode="bilinear", align_corners=True)
    return x[(Ellipsis, *(slice(0, n * factor) for n in size))]


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias, "same" padding for odd kernels) → batch norm → ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, stride: int = 1):
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """3×3 depthwise (dilated) conv → BN → ReLU → 1×1 pointwise conv → BN → ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _conv3x3(cin: int, cout: int, dilation: int, separable: bool) -> nn.Sequential:
    if separable:
        return SeparableConvBNReLU(cin, cout, dilation)
    return ConvBNReLU(cin, cout, 3, dilation)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with batch norm (v3), optionally separable (v3+)."""

    def __init__(
        self,
        cin: int,
        channels: int,
        rates: Sequence[int],
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(cin, channels, 1)])
        for rate in rates:
            self.branches.append(_conv3x3(cin, channels, int(rate), separable))
        self.pooling = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(cin, channels, 1)) if image_pooling else None
        )
        n_branches = len(self.branches) + (1 if image_pooling else 0)
        self.project = ConvBNReLU(n_branches * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x).expand(-1, -1, *x.shape[2:]))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


def _large_fov_head(cin: int, num_classes: int, rate: int, channels: int, dropout: float) -> nn.Sequential:
    """DeepLab's atrous fc6 (3×3, ``rate``) → fc7 (1×1) → fc8 (1×1 to the classes)."""
    return nn.Sequential(
        nn.Conv2d(cin, channels, 3, padding=rate, dilation=rate),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(channels, channels, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(channels, num_classes, 1),
    )


class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV: atrous VGG-16 (stride 8) + fc6 (rate 12) / fc7 / fc8, upsampled ×8."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rate: int = 12,
        fc_channels: int = 1024,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.backbone = make_backbone("vgg16", in_channels, 8, width_mult)
        channels = _scaled(fc_channels, width_mult)
        self.head = _large_fov_head(self.backbone.out_channels, num_classes, rate, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_aligned(self.head(self.backbone(x)["out"]), 8)


class DeepLabV2(nn.Module):
    """ASPP-L: parallel atrous branches (rates 6/12/18/24) summed; stride 8, upsampled ×8."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "vgg16",
        rates: Sequence[int] = (6, 12, 18, 24),
        fc_channels: int = 1024,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if backbone != "vgg16" and not backbone.startswith("resnet"):
            raise ValueError(f"DeepLab v2 uses vgg16 or a ResNet backbone, not {backbone!r}")
        self.backbone = make_backbone(backbone, in_channels, 8, width_mult)
        cin = self.backbone.out_channels
        channels = _scaled(fc_channels, width_mult)
        branches: list[nn.Module] = []
        for rate in rates:
            if backbone == "vgg16":
                branches.append(_large_fov_head(cin, num_classes, int(rate), channels, dropout))
            else:
                branches.append(nn.Conv2d(cin, num_classes, 3, padding=rate, dilation=rate))
        self.aspp = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)["out"]
        logits = torch.stack([branch(features) for branch in self.aspp]).sum(dim=0)
        return upsample_aligned(logits, 8)


def _aspp_rates(rates: Sequence[int], output_stride: int) -> list[int]:
    """ASPP rates are given for output stride 16; at 8 they double (the paper's rule)."""
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLab v3/v3+ output_stride must be 8 or 16, got {output_stride}")
    return [int(r) * 16 // output_stride for r in rates]


def _multi_grid(backbone: str, multi_grid: Sequence[int] | None) -> tuple[int, ...] | None:
    """Multi-grid unit rates apply to ResNet backbones only (empty: none)."""
    if not backbone.startswith("resnet") or not multi_grid:
        return None
    return tuple(int(u) for u in multi_grid)


class DeepLabV3(nn.Module):
    """Atrous backbone + ASPP (with image pooling) + 1×1 classifier, upsampled ×stride."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        image_pooling: bool = True,
        width_mult: float = 1.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        rates = _aspp_rates(aspp_rates, output_stride)
        self.output_stride = output_stride
        self.backbone = make_backbone(
            backbone, in_channels, output_stride, width_mult, _multi_grid(backbone, multi_grid)
        )
        channels = _scaled(aspp_channels, width_mult)
        self.aspp = ASPP(self.backbone.out_channels, channels, rates, False, image_pooling, dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)["out"]))
        return upsample_aligned(logits, self.output_stride)


class DeepLabV3Plus(nn.Module):
    """The v3 encoder + a decoder that fuses the stride-4 features; upsampled ×4."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "xception65",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (),
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        separable: bool = True,
        image_pooling: bool = True,
        width_mult: float = 1.0,
        dropout: float = 0.1,
        decoder: str = "bilinear",
    ):
        super().__init__()
        if backbone == "vgg16":
            raise ValueError("DeepLab v3+ needs a backbone with stride-4 features, not vgg16")
        if decoder not in DECODERS:
            raise ValueError(f"DeepLab v3+ decoder must be one of {DECODERS}, got {decoder!r}")
        self.dupsampling = decoder == "dupsampling"
        rates = _aspp_rates(aspp_rates, output_stride)
        self.output_stride = output_stride
        self.backbone = make_backbone(
            backbone, in_channels, output_stride, width_mult, _multi_grid(backbone, multi_grid)
        )
        channels = _scaled(aspp_channels, width_mult)
        low = _scaled(low_level_channels, width_mult)
        dec = _scaled(decoder_channels, width_mult)
        self.aspp = ASPP(self.backbone.out_channels, channels, rates, separable, image_pooling, dropout)
        self.reduce = ConvBNReLU(self.backbone.low_channels, low, 1)
        self.decoder = nn.Sequential(
            _conv3x3(channels + low, dec, 1, separable), _conv3x3(dec, dec, 1, separable)
        )
        if self.dupsampling:
            self.classifier = DUpsampling(dec, num_classes, output_stride)
        else:
            self.classifier = nn.Conv2d(dec, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        if self.dupsampling:
            low = F.interpolate(
                self.reduce(features["low"]),
                scale_factor=4 / self.output_stride,
                mode="bilinear",
                align_corners=False,
            )
            return self.classifier(self.decoder(torch.cat([self.aspp(features["out"]), low], dim=1)))
        y = upsample_aligned(self.aspp(features["out"]), self.output_stride // 4)
        y = self.decoder(torch.cat([y, self.reduce(features["low"])], dim=1))
        return upsample_aligned(self.classifier(y), 4)


DECODERS = ("bilinear", "dupsampling")


class DUpsampling(nn.Module):
    """Data-dependent upsampling: 1×1 projection to ``factor² · classes``, depth to space, ÷ temperature."""

    def __init__(self, cin: int, num_classes: int, factor: int):
        super().__init__()
        self.project = nn.Conv2d(cin, num_classes * factor * factor, 1, bias=False)
        self.shuffle = nn.PixelShuffle(factor)
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.project(x)) / self.temperature


# --- receptive fields -------------------------------------------------------------------


def _v1_reach(config: Mapping[str, Any]) -> int:
    r = backbone_reach("vgg16", 8)["out"]
    return r.conv(3, dilation=int(config["rate"])).upsample(8).reach


def _v2_reach(config: Mapping[str, Any]) -> int:
    r = backbone_reach(str(config["backbone"]), 8)["out"]
    return r.conv(3, dilation=max(int(v) for v in config["rates"])).upsample(8).reach


def _encoder_reach(config: Mapping[str, Any]) -> dict[str, Reach]:
    backbone, stride = str(config["backbone"]), int(config["output_stride"])
    reach = backbone_reach(backbone, stride, _multi_grid(backbone, config["multi_grid"]))
    rate = max(_aspp_rates(config["aspp_rates"], stride))
    reach["aspp"] = reach["out"].copy().conv(3, dilation=rate)
    return reach


def _v3_reach(config: Mapping[str, Any]) -> int:
    return _encoder_reach(config)["aspp"].upsample(int(config["output_stride"])).reach


def _v3plus_reach(config: Mapping[str, Any]) -> int:
    reach = _encoder_reach(config)
    if config.get("decoder") == "dupsampling":
        return _dupsampling_reach(reach, int(config["output_stride"]))
    deep = reach["aspp"].upsample(int(config["output_stride"]) // 4)
    fused = Reach(max(deep.reach, reach["low"].reach), jump=4)
    return fused.conv(3).conv(3).upsample(4).reach


def _dupsampling_reach(reach: dict[str, Reach], stride: int) -> int:
    """Stride-4 features resized down to the output stride, fused, two 3×3 convs, depth to space."""

    def wiring(x: Span) -> Span:
        deep = Span.centred(len(x), reach["aspp"])
        low = Span.centred(len(x), reach["low"]).resize_down(stride // 4)
        return (deep | low).conv(3).conv(3).unpool(stride)

    return span_reach(wiring, stride)


def _downsampling(config: Mapping[str, Any]) -> int:
    return int(config["output_stride"])


# --- registry ---------------------------------------------------------------------------

_SMALL = {"width_mult": 1 / 16}

register(
    ArchSpec(
        name="deeplabv1",
        family="DeepLab",
        factory=DeepLabV1,
        spatial_dims=2,
        downsampling=8,
        reach=_v1_reach,
        default_tile=512,
        paper=PAPER_V1,
        paper_params=20_500_000,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "rate": 12,
            "fc_channels": 1024,
            "width_mult": 1.0,
            "dropout": 0.5,
        },
        notes="DeepLab-LargeFOV; the paper's count is given to 0.1M. No CRF (the engine has one).",
        small=_SMALL,
    )
)

register(
    ArchSpec(
        name="deeplabv2",
        family="DeepLab",
        factory=DeepLabV2,
        spatial_dims=2,
        downsampling=8,
        reach=_v2_reach,
        default_tile=512,
        paper=PAPER_V2,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "vgg16",
            "rates": (6, 12, 18, 24),
            "fc_channels": 1024,
            "width_mult": 1.0,
            "dropout": 0.5,
        },
        notes=(
            "VGG-16 ASPP-L; backbone='resnet101' gives the paper's ResNet model. "
            "The paper states no count. No CRF (the engine has one)."
        ),
        small=_SMALL,
    )
)

register(
    ArchSpec(
        name="deeplabv3",
        family="DeepLab",
        factory=DeepLabV3,
        spatial_dims=2,
        downsampling=_downsampling,
        reach=_v3_reach,
        default_tile=512,
        paper=PAPER_V3,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "resnet101",
            "output_stride": 16,
            "multi_grid": (1, 2, 4),
            "aspp_rates": (6, 12, 18),
            "aspp_channels": 256,
            "image_pooling": True,
            "width_mult": 1.0,
            "dropout": 0.1,
        },
        notes=IMAGE_POOLING_NOTE,
        small=_SMALL,
    )
)

register(
    ArchSpec(
        name="deeplabv3plus",
        family="DeepLab",
        factory=DeepLabV3Plus,
        spatial_dims=2,
        downsampling=_downsampling,
        reach=_v3plus_reach,
        default_tile=512,
        paper=PAPER_V3P,
        fully_convolutional=False,
        defaults={
            "in_channels": 3,
            "num_classes": 21,
            "backbone": "xception65",
            "output_stride": 16,
            "multi_grid": (),
            "aspp_rates": (6, 12, 18),
            "aspp_channels": 256,
            "low_level_channels": 48,
            "decoder_channels": 256,
            "separable": True,
            "image_pooling": True,
            "width_mult": 1.0,
            "dropout": 0.1,
            "decoder": "bilinear",
        },
        notes=IMAGE_POOLING_NOTE + " decoder='dupsampling': DUpsampling (Tian et al., CVPR 2019).",
        small=_SMALL,
    )
)
