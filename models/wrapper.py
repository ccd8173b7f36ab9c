"""The wrapper every built model is returned in: any input size, known geometry.

Networks with poolings need input sizes divisible by their total downsampling
factor. :class:`SegmentationModel` pads the input up to the next multiple
(reflecting where the input is large enough, replicating otherwise) and crops the
logits back, so callers can hand it any size. It also carries the registry
metadata the engine reads: spatial dims, downsampling, reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ArchSpec


def pad_far_side(x: torch.Tensor, size: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Pad the trailing ``len(size)`` axes of ``(N, C, *spatial)`` up to ``size``, on their far side.

    By reflection, or by repeating the edge value along an axis too short to reflect. The
    one padding rule of gigaseg: a model's input up to its downsampling factor, and a tile
    that runs past the scene edge (the engine).

    >>> pad_far_side(torch.tensor([[[1.0, 2.0, 3.0]]]), (5,)).tolist()
    [[[1.0, 2.0, 3.0, 2.0, 1.0]]]
    >>> pad_far_side(torch.tensor([[[1.0, 2.0]]]), (5,)).tolist()
    [[[1.0, 2.0, 2.0, 2.0, 2.0]]]
    """
    have = tuple(x.shape[-len(size) :])
    pads: list[int] = []
    for n, want in zip(reversed(have), reversed(size)):
        pads.extend([0, want - n])
    if not any(pads):
        return x
    can_reflect = all(extra < n for extra, n in zip(pads[1::2], reversed(have)))
    return F.pad(x, pads, mode="reflect" if can_reflect else "replicate")


def pad_to_multiple(x: torch.Tensor, factor: int, spatial_dims: int) -> torch.Tensor:
    """Pad the trailing ``spatial_dims`` axes of ``x`` up to multiples of ``factor``."""
    return pad_far_side(x, [-(-n // factor) * factor for n in x.shape[-spatial_dims:]])


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Crop the trailing axes of ``x`` to ``size`` (origin kept)."""
    index = (Ellipsis, *(slice(0, s) for s in size))
    return x[index]


class SegmentationModel(nn.Module):
    """A registered network plus its geometry; forward accepts any spatial size.

    In eval mode ``forward`` returns the logits tensor ``(N, classes, *size)``.
    A network that exposes auxiliary outputs in training mode returns a dict
    ``{"out": logits, "aux": [logits, ...]}``; every entry is cropped likewise.
    """

    def __init__(self, net: nn.Module, spec: ArchSpec, config: Mapping[str, Any]):
        super().__init__()
        self.net = net
        self.spec = spec
        self.config = dict(config)
        self.spatial_dims = spec.spatial_dims
        self.downsampling = spec.downsampling_for(config)
        self.reach = spec.reach_for(config)
        self.in_channels = int(config["in_channels"])
        self.num_classes = int(config["num_classes"])

    @property
    def fully_convolutional(self) -> bool:
        """Whether the registry declares the network free of global context (``--blend auto``)."""
        return self.spec.fully_convolutional

    @property
    def arch(self) -> str:
        """Registry name of the architecture."""
        return self.spec.name

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{self.arch} expects (N, C, {'Z, ' if self.spatial_dims == 3 else ''}Y, X) "
                f"input, got shape {tuple(x.shape)}"
            )
        size = tuple(x.shape[-self.spatial_dims :])
        out = self.net(pad_to_multiple(x, self.downsampling, self.spatial_dims))
        if isinstance(out, dict):
            cropped = dict(out)
            cropped["out"] = crop_to(out["out"], size)
            if "aux" in out:
                cropped["aux"] = [_resize_to(a, size) for a in out["aux"]]
            return cropped
        return crop_to(out, size)


def _resize_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bring an auxiliary output to ``size``: upsample if it is coarser, else crop."""
    if any(s < t for s, t in zip(x.shape[-len(size) :], size)):
        mode = "bilinear" if len(size) == 2 else "trilinear"
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return crop_to(x, size)
