"""3D U-Net (Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, MICCAI 2016).

The U-Net made volumetric: 3×3×3 convolutions, 2×2×2 poolings and
up-convolutions, batch norm before each ReLU. Its channel plan differs from the
2D U-Net: each level's first convolution keeps half the channels its second one
produces (32→64, 64→128, 128→256, bottom 256→512), and the up-convolutions keep
their channel count (512→512 …). Three poolings; 3-channel input, 3 labels.

The paper's network uses unpadded convolutions (132×132×116 in, 44×44×28 out);
``padding="valid"`` reproduces it with the same internal mirror padding as the
2D U-Net (see :mod:`models.unet`), ``"same"`` zero-pads instead.

Parameters: the paper states 19,069,955. That figure is reproduced exactly by a
count with convolution biases, no batch-norm scale/shift and bias-free
up-convolutions (Caffe's BatchNorm layer without a Scale layer). Here batch norm
has its usual scale and shift and convolutions followed by it have no bias,
which gives 19,073,187 (+0.017 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.registry import ArchSpec, register
from models.unet import UNetND, unet_reach


def build_unet3d(
    in_channels: int,
    num_classes: int,
    width: int = 32,
    depth: int = 3,
    batch_norm: bool = True,
    padding: str = "valid",
) -> UNetND:
    """3D U-Net with ``width`` channels in the first convolution and ``depth`` poolings."""
    encoder = [(width * 2**level, width * 2 ** (level + 1)) for level in range(depth + 1)]
    # The up-convolution into level l keeps the channels arriving from level l + 1.
    upconv = [width * 2 ** (level + 2) for level in range(depth)]
    decoder = [(width * 2 ** (level + 1), width * 2 ** (level + 1)) for level in range(depth)]
    return UNetND(
        dims=3,
        in_channels=in_channels,
        num_classes=num_classes,
        encoder=encoder,
        upconv=upconv,
        decoder=decoder,
        batch_norm=batch_norm,
        padding=padding,
    )


def _reach(config: Mapping[str, Any]) -> int:
    return unet_reach(int(config["depth"]))


register(
    ArchSpec(
        name="unet3d",
        family="3D U-Net",
        factory=build_unet3d,
        spatial_dims=3,
        downsampling=lambda c: 2 ** int(c["depth"]),
        reach=_reach,
        default_tile=96,
        paper="Çiçek et al., 3D U-Net, MICCAI 2016",
        paper_params=19_069_955,
        defaults={
            "in_channels": 3,
            "num_classes": 3,
            "width": 32,
            "depth": 3,
            "batch_norm": True,
            "padding": "valid",
        },
        notes=(
            "paper's exact count assumes Caffe batch norm (no scale/shift) and bias-free "
            "up-convolutions; ours has affine batch norm and bias-free convolutions before it."
        ),
        small={"width": 2},
    )
)
