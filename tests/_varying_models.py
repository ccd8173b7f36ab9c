"""Fixture models whose labels follow the image: hand-set U-Net weights, no training.

An untrained network predicts one class almost everywhere, so a test comparing its
labels proves little: a block written in the wrong place would still pass. These
models compute, at every pixel / voxel, a *brightness*

    v = ½ · (box-smoothed weighted band mean) + ½ · (the pixel's own weighted band mean)

with the U-Net's first level (3×3 box in each convolution of ``padding="valid"``
U-Nets, so 5×5 in all; the deeper levels are switched off) and cut it into classes at
fixed thresholds (an ordinal head: class ``j`` wins where ``v`` lies between
threshold ``j`` and ``j + 1``). Labels therefore change wherever the image does —
inside blocks and across block edges — and depend on neighbouring pixels, so a
missing halo or a shifted block changes them. :func:`label_spread` measures how far
a label map is from one class; fixtures assert on it, so they cannot decay silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models import build
from models.wrapper import SegmentationModel

#: Added to every first-level feature so the ReLUs pass it; the head takes it off again.
SHIFT = 10.0


@dataclass(frozen=True)
class LabelSpread:
    """How many classes a label map holds and the share of its rarest one (nodata excluded)."""

    classes: int
    smallest_share: float

    def check(self, min_classes: int, min_share: float) -> None:
        """Raise ``AssertionError`` unless at least ``min_classes`` classes each hold ``min_share``."""
        assert self.classes >= min_classes and self.smallest_share >= min_share, (
            f"labels do not vary enough: {self.classes} classes (want ≥ {min_classes}), "
            f"rarest {self.smallest_share:.3f} (want ≥ {min_share})"
        )


def label_spread(labels: np.ndarray, nodata: int | None = 255) -> LabelSpread:
    """Class count and rarest-class share of ``labels``, ignoring ``nodata``.

    >>> label_spread(np.array([0, 0, 1, 2, 255]))
    LabelSpread(classes=3, smallest_share=0.25)
    """
    values = labels[labels != nodata] if nodata is not None else labels.ravel()
    counts = np.bincount(values.ravel().astype(np.int64))
    counts = counts[counts > 0]
    if counts.size == 0:
        return LabelSpread(0, 0.0)
    return LabelSpread(int(counts.size), float(counts.min() / counts.sum()))


def _set_feature_conv(
    conv: nn.Module, sources: Sequence[Sequence[float]], boxed: Sequence[bool], bias: float
) -> None:
    """Output ``k`` = Σ_c sources[k][c] · (3×3 box if ``boxed[k]``, else centre tap, of input ``c``)
    + ``bias`` (through the following batch norm when the convolution has no bias); others zero."""
    weight = torch.zeros_like(conv.weight)
    dims = weight.ndim - 2
    centre = (1,) * dims
    for k, (coefficients, box) in enumerate(zip(sources, boxed)):
        for c, a in enumerate(coefficients):
            if box:
                weight[k, c] = a / 3**dims
            else:
                weight[(k, c, *centre)] = a
    with torch.no_grad():
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()
            conv.bias[: len(sources)] = bias


def _convs_and_norms(block: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """Each convolution of a double-conv block with the batch norm after it (``None`` without one)."""
    layers = list(block)
    pairs = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
            following = layers[i + 1]
            pairs.append(
                (layer, following if isinstance(following, nn.modules.batchnorm._BatchNorm) else None)
            )
    return pairs


def _set_norm(norm: nn.Module | None, bias: float) -> None:
    """Batch norm as an exact identity (eval mode) plus ``bias`` on the first two channels."""
    if norm is None:
        return
    with torch.no_grad():
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        norm.bias[:2] = bias


def set_image_following_weights(
    model: SegmentationModel, band_weights: Sequence[float], thresholds: Sequence[float], sharpness: float
) -> SegmentationModel:
    """Overwrite ``model``'s U-Net weights with the ordinal brightness classifier described above."""
    net = model.net
    if len(thresholds) != model.num_classes - 1:
        raise ValueError(f"{model.num_classes} classes need {model.num_classes - 1} thresholds")
    # A second box only without zero padding: it would dent the shifted feature at tile edges.
    second_box = net.padding == "valid"
    identity = [[1.0, 0.0], [0.0, 1.0]]
    layers = [
        (net.down[0], [band_weights, band_weights], [(True, False), (second_box, False)]),
        (net.merge[-1], identity, [(False, False), (False, False)]),
    ]
    for module in list(net.down[1:]) + list(net.up) + list(net.merge[:-1]):
        for p in module.parameters():
            with torch.no_grad():
                p.zero_()
    for block, first_sources, boxes in layers:
        for n, ((conv, norm), boxed) in enumerate(zip(_convs_and_norms(block), boxes)):
            shift = SHIFT if block is net.down[0] and n == 0 else 0.0
            sources = first_sources if n == 0 else identity
            _set_feature_conv(conv, sources, boxed, shift if norm is None else 0.0)
            _set_norm(norm, shift)
    # logit_j = k · (j · v − Σ_{i<j} t_i),  v = ½ f0 + ½ f1 − SHIFT
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        for j in range(model.num_classes):
            net.head.weight[j, 0] = net.head.weight[j, 1] = sharpness * j / 2
            net.head.bias[j] = -sharpness * (j * SHIFT + sum(thresholds[:j]))
    return model.eval()


def image_following_unet(
    arch: str,
    in_channels: int,
    thresholds: Sequence[float],
    band_weights: Sequence[float] | None = None,
    sharpness: float = 40.0,
    **config,
) -> SegmentationModel:
    """A ``unet`` / ``unet3d`` whose labels are the image's brightness cut at ``thresholds``.

    >>> m = image_following_unet("unet", 1, [0.0], width=4, depth=2)
    >>> x = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(1, 1, 32, 64)
    >>> labels = m(x).argmax(1)
    >>> bool((labels[..., :28] == 0).all() and (labels[..., 36:] == 1).all())
    True
    """
    weights = list(band_weights) if band_weights is not None else [1.0 / in_channels] * in_channels
    model = build(arch, in_channels=in_channels, num_classes=len(thresholds) + 1, **config)
    return set_image_following_weights(model, weights, thresholds, sharpness)
