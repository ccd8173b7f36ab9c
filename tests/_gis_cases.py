"""A small georeferenced scene and an untrained model with named, coloured classes (GIS output tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

NAMES = ["water", "forest", "field"]
ARGS = ["--tile", "64", "--chunk", "64", "--quiet", "--workers", "0", "--no-track"]


def gis_model(folder: Path) -> Path:
    """A seeded, untrained small U-Net for 2-band input and 3 classes (colours from the card)."""
    import torch

    from models import build
    from models.checkpoint import ModelCard, save_checkpoint

    torch.manual_seed(0)
    net = build("unet", in_channels=2, num_classes=3, width=4, depth=2)
    card = ModelCard(
        arch="unet",
        config=net.config,
        class_names=NAMES,
        class_colors=[(0, 0, 255), (0, 128, 0), (200, 200, 0)],
        normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5},
        tile_size=64,
    )
    return save_checkpoint(folder / "unet.safetensors", net, card)


def gis_scene(folder: Path) -> Path:
    """2-band 300×260 GeoTIFF (10 m UTM pixels): smooth patches, a nodata corner (value 0)."""
    rng = np.random.default_rng(2)
    coarse = rng.random((2, 10, 9)) * 3000 + 100
    data = np.kron(coarse, np.ones((1, 30, 30)))[:, :260, :300]
    data = (data + rng.random(data.shape) * 300).astype(np.uint16)
    data[:, :40, :50] = 0
    path = folder / "scene.tif"
    transform = Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0)
    profile = {"driver": "GTiff", "height": 260, "width": 300, "count": 2, "dtype": "uint16", "nodata": 0}
    profile.update(crs=CRS.from_epsg(32633), transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path
