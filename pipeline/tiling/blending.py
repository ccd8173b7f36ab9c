"""Blending windows: how much each tile's prediction counts at each of its pixels.

Overlapping tiles are combined as a weighted mean, ``sum(w * p) / sum(w)``,
accumulated in float32. Windows are separable: the N-D weight is the outer
product of one 1-D profile per axis, so 2D and 3D share the code.

- ``constant``: every pixel of a tile counts the same (plain averaging).
- ``gaussian``: a Gaussian centred on the tile, sigma = ``sigma`` × tile size
  (default 1/8, as in nnU-Net), floored at ``1e-3`` so no covered pixel gets zero.
- ``crop``: each tile keeps only its central ``stride`` pixels (half the overlap
  discarded on each side), except at the scene's edges, where the outer border is
  kept; the kept regions of neighbouring tiles tile the scene exactly.
- ``auto`` (the default of a job, resolved once per model by :func:`resolve_blend`):
  ``crop`` for a model declared fully convolutional, whose prediction at a pixel
  depends only on a bounded neighbourhood (the tile centre then sees everything the
  untiled pass sees), ``gaussian`` for one with global context, where ``crop``
  would show each tile's different pooled context as hard steps.

Nodata pixels get zero weight: because the valid mask is per pixel, not per tile,
``sum(w * v * p) / sum(w * v)`` equals ``sum(w * p) / sum(w)`` wherever ``v`` is 1,
so the engine applies the mask once per block rather than once per tile.

Because windows are separable and the tiles meeting a box form a product of
per-axis index ranges, the total weight over a box is separable too
(:meth:`BlendWindow.coverage`): one 1-D sum per axis, multiplied out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.tiling.grid import TileGrid
from pipeline.tiling.regions import Region

BLEND_MODES = ("constant", "gaussian", "crop")
AUTO = "auto"
BLEND_CHOICES = (AUTO, *BLEND_MODES)
"""What a job may ask for: a mode, or ``auto`` (resolved per model)."""
GAUSSIAN_FLOOR = 1e-3


def _profile(mode: str, tile: int, stride: int, first: bool, last: bool, sigma: float) -> np.ndarray:
    if mode == "constant":
        return np.ones(tile, dtype=np.float32)
    if mode == "gaussian":
        centre = (tile - 1) / 2.0
        x = np.arange(tile, dtype=np.float64)
        w = np.exp(-0.5 * ((x - centre) / (sigma * tile)) ** 2)
        return np.maximum(w / w.max(), GAUSSIAN_FLOOR).astype(np.float32)
    if mode == "crop":
        w = np.ones(tile, dtype=np.float32)
        discard = tile - stride
        left = discard // 2
        right = discard - left
        if not first and left:
            w[:left] = 0.0
        if not last and right:
            w[tile - right :] = 0.0
        return w
    raise ValueError(f"unknown blend mode {mode!r}; choose from {', '.join(BLEND_MODES)}")


def resolve_blend(mode: str, fully_convolutional: bool) -> str:
    """The blending mode a job runs: ``mode`` itself, or for ``auto`` the model's.

    >>> resolve_blend("auto", True), resolve_blend("auto", False), resolve_blend("constant", True)
    ('crop', 'gaussian', 'constant')
    """
    if mode == AUTO:
        return "crop" if fully_convolutional else "gaussian"
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r}; choose from {', '.join(BLEND_CHOICES)}")
    return mode


@dataclass(frozen=True)
class BlendWindow:
    """Weights for every tile of one grid under one blending mode."""

    grid: TileGrid
    mode: str = "gaussian"
    sigma: float = 0.125

    def __post_init__(self) -> None:
        if self.mode not in BLEND_MODES:
            raise ValueError(f"unknown blend mode {self.mode!r}; choose from {', '.join(BLEND_MODES)}")
        if not self.sigma > 0:
            raise ValueError(f"gaussian sigma must be > 0, got {self.sigma}")

    def axis_profile(self, axis: int, i: int) -> np.ndarray:
        """The 1-D weight profile of tile ``i`` along ``axis`` (float32, tile-long)."""
        n = self.grid.counts[axis]
        first, last = (i == 0, i == n - 1) if self.mode == "crop" else (False, False)
        return _axis_profile(self.mode, self.grid.tile[axis], self.grid.stride[axis], first, last, self.sigma)

    def coverage(self, region: Region) -> list[np.ndarray]:
        """Per axis, the summed 1-D profiles of the tiles meeting ``region``, over ``region`` (float32).

        Their outer product is the total weight ``sum(w)`` every pixel of the box gets.
        Each pixel sums the same tiles in the same order whatever box it is computed in,
        so a block's coverage equals the whole scene's over that block.
        """
        out = []
        for axis, ((r0, r1), rng) in enumerate(zip(region, self.grid.index_range(region))):
            total = np.zeros(r1 - r0, dtype=np.float32)
            t, s = self.grid.tile[axis], self.grid.stride[axis]
            for i in rng:
                a, b = max(i * s, r0), min(i * s + t, r1)
                total[a - r0 : b - r0] += self.axis_profile(axis, i)[a - i * s : b - i * s]
            out.append(total)
        return out

    def weights(self, index: Sequence[int]) -> np.ndarray:
        """The N-D weight array (float32, tile-shaped) of tile ``index``."""
        flags = self.grid.position_flags(index) if self.mode == "crop" else None
        return _window(self.mode, self.grid.tile, self.grid.stride, flags, self.sigma)


@lru_cache(maxsize=256)
def _axis_profile(mode: str, tile: int, stride: int, first: bool, last: bool, sigma: float) -> np.ndarray:
    profile = _profile(mode, tile, stride, first, last, sigma)
    profile.setflags(write=False)
    return profile


@lru_cache(maxsize=64)
def _window(
    mode: str,
    tile: tuple[int, ...],
    stride: tuple[int, ...],
    flags: tuple[tuple[bool, bool], ...] | None,
    sigma: float,
) -> np.ndarray:
    flags = flags or ((False, False),) * len(tile)
    weight = np.ones((), dtype=np.float32)
    for t, s, (first, last) in zip(tile, stride, flags):
        weight = np.multiply.outer(weight, _profile(mode, t, s, first, last, sigma))
    weight.setflags(write=False)
    return weight
