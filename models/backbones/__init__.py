"""Classification trunks reused as feature extractors, written here (no torchvision/timm).

Each backbone maps an image to a dict of feature maps: ``"out"`` (the deepest,
at ``output_stride``) and, for the DeepLabv3+ decoder, ``"low"`` (stride 4). It
exposes ``out_channels``, ``low_channels`` (where it has ``"low"``) and
``output_stride``, and keeps the parameter names of the common ImageNet
checkpoints so :func:`load_backbone_weights` can fill it from a file.

:func:`make_backbone` and :func:`backbone_reach` look backbones up by the names
used in model configurations (``"resnet101"``, ``"xception65"`` …).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from models.backbones.mobilenetv2 import MobileNetV2, mobilenetv2_reach
from models.backbones.resnet import RESNET_LAYOUTS, ResNet, resnet_reach
from models.backbones.vgg import VGG16, vgg16_reach
from models.backbones.weights import BackboneWeightsError, load_backbone_weights, read_state_dict
from models.backbones.xception import AlignedXception, xception_reach
from models.receptive_field import Reach

__all__ = [
    "VGG16",
    "AlignedXception",
    "BackboneWeightsError",
    "MobileNetV2",
    "ResNet",
    "backbone_names",
    "backbone_reach",
    "load_backbone_weights",
    "make_backbone",
    "read_state_dict",
]

_RESNETS = {f"resnet{d}": d for d in RESNET_LAYOUTS}


def backbone_names() -> list[str]:
    """Names accepted by :func:`make_backbone`."""
    return ["vgg16", *_RESNETS, "xception65", "mobilenetv2"]


def make_backbone(
    name: str,
    in_channels: int = 3,
    output_stride: int = 16,
    width_mult: float = 1.0,
    multi_grid: Sequence[int] | None = None,
) -> nn.Module:
    """Build the backbone ``name`` at ``output_stride`` with channels scaled by ``width_mult``.

    ``vgg16`` is the DeepLab v1/v2 variant (3×3 poolings, atrous conv5).
    ``multi_grid`` applies to ResNets only.
    """
    if multi_grid is not None and name not in _RESNETS:
        raise ValueError(f"multi_grid applies to ResNet backbones, not {name!r}")
    if name == "vgg16":
        return VGG16(in_channels, _base_width(width_mult), output_stride, pool_kernel=3)
    if name in _RESNETS:
        return ResNet(_RESNETS[name], in_channels, _base_width(width_mult), output_stride, multi_grid)
    if name == "xception65":
        return AlignedXception(in_channels, output_stride, width_mult=width_mult)
    if name == "mobilenetv2":
        return MobileNetV2(in_channels, output_stride, width_mult)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")


def backbone_reach(
    name: str, output_stride: int = 16, multi_grid: Sequence[int] | None = None
) -> dict[str, Reach]:
    """Receptive fields (radius, stride) of the backbone's ``"out"`` and ``"low"`` features."""
    if name == "vgg16":
        return {"out": vgg16_reach(output_stride, pool_kernel=3)}
    if name in _RESNETS:
        return resnet_reach(_RESNETS[name], output_stride, multi_grid)
    if name == "xception65":
        return xception_reach(output_stride)
    if name == "mobilenetv2":
        return mobilenetv2_reach(output_stride)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")


def _base_width(width_mult: float) -> int:
    return max(1, round(64 * width_mult))
