"""Segmentation architectures behind one registry.

>>> from models import build
>>> net = build("unet", in_channels=4, num_classes=5, width=16)

``build(name)`` with no configuration gives the paper's canonical network. The
returned :class:`~models.wrapper.SegmentationModel` accepts any input size and
carries the geometry the tiled engine needs. This package knows nothing of the
pipeline that runs it.
"""

from __future__ import annotations

from typing import Any

# Architecture modules register themselves on import; one module per family.
from models import (  # noqa: F401
    bisenet,
    danet,
    deeplab,
    denseaspp,
    dfanet,
    dilatednet,
    encnet,
    enet,
    fastfcn,
    fcdensenet,
    fcn,
    frrn,
    gcn,
    gfrnet,
    icnet,
    lednet,
    linknet,
    pspnet,
    refinenet,
    segnet,
    trivial,
    unet,
    unet3d,
)
from models.registry import ArchSpec, UnknownArchitectureError, get_spec, names, specs
from models.wrapper import SegmentationModel

__all__ = [
    "ArchSpec",
    "SegmentationModel",
    "UnknownArchitectureError",
    "build",
    "get_spec",
    "names",
    "specs",
]


def build(
    name: str,
    in_channels: int | None = None,
    num_classes: int | None = None,
    **config: Any,
) -> SegmentationModel:
    """Build the registered architecture ``name`` wrapped for any input size.

    Unspecified settings take the paper's canonical values (including its input
    channels and class count).
    """
    spec = get_spec(name)
    resolved = spec.resolve_config(in_channels=in_channels, num_classes=num_classes, **config)
    net = spec.factory(**resolved)
    return SegmentationModel(net, spec, resolved)
