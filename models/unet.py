"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), in 2D and (for 3D U-Net) N-D.

A contracting path of double 3×3 convolutions and 2×2 max-poolings, an expanding
path of 2×2 up-convolutions, skip concatenations, and a 1×1 classifier.

``padding="valid"`` is the paper's network: unpadded convolutions, so a
572×572 input gives 388×388 logits, and skip connections are centre-cropped.
The paper tiles large images with its *overlap-tile* strategy, mirroring the
image beyond its border to supply the missing context; this network does the
same inside ``forward`` (mirror-pads its input by the context it consumes, then
runs unpadded), so the wrapper's contract holds: logits have the input's size.
``padding="same"`` zero-pads every convolution instead: cheaper (no context
margin to compute) and the usual choice for fast models. ``width`` scales every
level's channels, ``depth`` is the number of poolings.

:class:`UNetND` is shared with :mod:`models.unet3d`, whose channel plan differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ArchSpec, register

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
PADDINGS = ("valid", "same")


class DoubleConv(nn.Sequential):
    """Two 3×3(×3) convolutions, each followed by (optional) batch norm and ReLU."""

    def __init__(self, cin: int, cmid: int, cout: int, batch_norm: bool, padding: str, dims: int = 2):
        layers: list[nn.Module] = []
        for c_in, c_out in ((cin, cmid), (cmid, cout)):
            pad = 1 if padding == "same" else 0
            layers.append(_CONV[dims](c_in, c_out, 3, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(_NORM[dims](c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def mirror_pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Mirror ``x`` beyond its trailing borders by ``pads`` (``F.pad`` order), any amount.

    Reflection needs a pad smaller than the axis, so wide pads reflect repeatedly
    (the image continues as its mirror, then as itself, …); a single-pixel axis
    can only be repeated.
    """
    remaining = list(pads)
    while any(remaining):
        step = []
        for i, amount in enumerate(remaining):
            extent = x.shape[-1 - i // 2]
            step.append(min(amount, max(extent - 1, 0)))
        if not any(step):
            return F.pad(x, remaining, mode="replicate")
        x = F.pad(x, step, mode="reflect")
        remaining = [r - s for r, s in zip(remaining, step)]
    return x


def valid_margins(size: int, depth: int) -> tuple[int, int]:
    """(before, after) context a valid U-Net of ``depth`` needs so its output covers ``size``.

    Each level's two unpadded convolutions consume 2 pixels a side at their
    scale, so the output sits ``6 · 2**depth - 4`` pixels inside the input. The
    bottom map must be whole after every pooling, so the output size is
    ``2**depth · b - 4 · (2**depth - 1)`` for an integer ``b``; the smallest such
    size ≥ ``size`` fixes the extra margin after the image.
    """
    step = 2**depth
    inset = 6 * step - 4
    shrink_below = 4 * (step - 1)
    bottom = max(1, -(-(size + shrink_below) // step))
    out = step * bottom - shrink_below
    return inset, inset + out - size


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre of ``x``'s trailing axes, ``size`` large (differences must be even)."""
    index: list[slice] = []
    for extent, target in zip(x.shape[-len(size) :], size):
        offset, odd = (extent - target) // 2, (extent - target) % 2  # not divmod: traceable sizes
        if odd or offset < 0:
            raise ValueError(f"cannot centre-crop {extent} to {target}")
        index.append(slice(offset, offset + target))
    return x[(Ellipsis, *index)]


class UNetND(nn.Module):
    """The U-shaped network, given its channel plan (deepest level last).

    ``encoder[l] = (mid, out)`` channels of level ``l``'s double conv (the last
    entry is the bottom); ``upconv[l]`` the output channels of the up-convolution
    into level ``l``; ``decoder[l] = (mid, out)`` of the double conv after the
    skip concatenation.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        num_classes: int,
        encoder: Sequence[tuple[int, int]],
        upconv: Sequence[int],
        decoder: Sequence[tuple[int, int]],
        batch_norm: bool,
        padding: str,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        depth = len(encoder) - 1
        if depth < 1 or len(upconv) != depth or len(decoder) != depth:
            raise ValueError("a U-Net needs depth ≥ 1 and one up level per down level")
        self.dims, self.depth, self.padding = dims, depth, padding
        self.down = nn.ModuleList()
        cin = in_channels
        for mid, out in encoder:
            self.down.append(DoubleConv(cin, mid, out, batch_norm, padding, dims))
            cin = out
        self.pool = _POOL[dims](2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = encoder[level][1]
            self.up.append(_UPCONV[dims](cin, upconv[level], 2, stride=2))
            mid, out = decoder[level]
            self.merge.append(DoubleConv(skip + upconv[level], mid, out, batch_norm, padding, dims))
            cin = out
        self.head = _CONV[dims](cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-self.dims :]
        if self.padding == "valid":
            pads: list[int] = []
            for extent in reversed(size):
                pads.extend(valid_margins(extent, self.depth))
            x = mirror_pad(x, pads)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = up(x)
            if self.padding == "valid":
                skip = center_crop(skip, x.shape[-self.dims :])
            x = merge(torch.cat([skip, x], dim=1))
        x = self.head(x)
        if self.padding == "valid":
            x = x[(Ellipsis, *(slice(0, s) for s in size))]
        return x


def unet_reach(depth: int) -> int:
    """Receptive-field radius of a U-Net with ``depth`` poolings (either padding).

    At level ``l`` (scale ``2**l``) the encoder's and the decoder's two 3×3
    convolutions add ``2**l`` each; a 2×2 pooling and the 2×2 up-convolution
    that returns from below together widen the window by one pixel of that scale
    on one side; the bottom's two convolutions add ``2**depth`` each:
    ``5 · (2**depth - 1) + 2 · 2**depth``.
    """
    return 5 * (2**depth - 1) + 2 * 2**depth


def build_unet(
    in_channels: int,
    num_classes: int,
    width: int = 64,
    depth: int = 4,
    batch_norm: bool = False,
    padding: str = "valid",
) -> UNetND:
    """The paper's 2D U-Net plan: ``width · 2**l`` channels at level ``l``; up-convs halve them."""
    chans = [width * 2**level for level in range(depth + 1)]
    return UNetND(
        dims=2,
        in_channels=in_channels,
        num_classes=num_classes,
        encoder=[(c, c) for c in chans],
        upconv=chans[:-1],
        decoder=[(c, c) for c in chans[:-1]],
        batch_norm=batch_norm,
        padding=padding,
    )


def _reach(config: Mapping[str, Any]) -> int:
    return unet_reach(int(config["depth"]))


register(
    ArchSpec(
        name="unet",
        family="U-Net",
        factory=build_unet,
        spatial_dims=2,
        downsampling=lambda c: 2 ** int(c["depth"]),
        reach=_reach,
        default_tile=512,
        paper="Ronneberger, Fischer & Brox, U-Net, MICCAI 2015",
        defaults={
            "in_channels": 1,
            "num_classes": 2,
            "width": 64,
            "depth": 4,
            "batch_norm": False,
            "padding": "valid",
        },
        notes=(
            "paper states no parameter count; its Fig. 1 layer list gives 31,030,658. "
            'padding="valid" mirror-pads the input internally (overlap-tile), '
            '"same" zero-pads each convolution. The paper\'s dropout at the end of the '
            "contracting path (a training regularizer, no parameters) is not included."
        ),
        small={"width": 4},
    )
)
