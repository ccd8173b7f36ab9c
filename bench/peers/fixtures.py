"""What every row runs on: the models (cases), the scenes and the seeded weights."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NORMALIZATION = {"kind": "meanstd", "mean": [127.5], "std": [64.0]}


@dataclass
class Case:
    """One model: how it is built and how it is tiled."""

    name: str
    arch: str
    config: dict[str, Any]
    classes: int
    tile: int
    batch: int
    sizes: list[int] = field(default_factory=list)
    """Scene sides (px)."""
    skip_by_default: tuple[str, ...] = ()
    """Rows left out unless ``--rows`` names them (e.g. a channels-last row where the layout is moot)."""


def side_of(mpx: float) -> int:
    """The side (px) of a square scene of about ``mpx`` megapixels, a multiple of 512 (at least 512)."""
    return max(512, round(math.sqrt(mpx * 1e6) / 512) * 512)


def bench_cases(sizes: list[float], unet_sizes: list[float]) -> list[Case]:
    """The two models benched: a compute-bound U-Net and an I/O-bound 1×1 convolution."""
    return [
        Case("U-Net w16 d3 (same padding), 3 classes", "unet",
             {"width": 16, "depth": 3, "padding": "same"}, 3, 256, 4, [side_of(s) for s in unet_sizes]),
        Case("1×1 conv, 2 classes", "conv1x1", {}, 2, 512, 8, [side_of(s) for s in sizes],
             skip_by_default=("monai-gaussian-cl",)),
    ]  # fmt: skip


def write_scene(path: Path, side: int) -> Path:
    """A single-band uint8 scene with texture at several scales, written strip by strip."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint8",
        "crs": CRS.from_epsg(32633), "transform": Affine(0.5, 0, 500000, 0, -0.5, 5000000),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1,
        "num_threads": "all_cpus", "bigtiff": "IF_SAFER",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    step, coarse = 2048, 64
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, step):
            h = min(step, side - r)
            big = rng.random((h // coarse + 1, side // coarse + 1), dtype=np.float32)
            smooth = np.repeat(np.repeat(big, coarse, 0), coarse, 1)[:h, :side]
            fine = rng.random((h, side), dtype=np.float32)
            strip = (200 * smooth + 55 * fine).astype(np.uint8)
            dst.write(strip, 1, window=rasterio.windows.Window(0, r, side, h))
    return path


def read_scene(path: str) -> np.ndarray:
    """The whole scene as a ``(bands, H, W)`` array (what the in-memory peers get)."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def make_checkpoint(case: Case, path: Path) -> Path:
    """The case's model with seeded random weights, saved once: every row loads these."""
    import torch

    from models import build
    from models.checkpoint import card_for, save_checkpoint

    torch.manual_seed(0)
    model = build(case.arch, in_channels=1, num_classes=case.classes, **case.config)
    return save_checkpoint(path, model, card_for(model, tile_size=case.tile, normalization=NORMALIZATION))
