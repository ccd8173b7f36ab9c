"""A 2D model over a volume, one slice at a time, along a chosen axis.

The volume keeps its 3D tile grid, with tiles one voxel thick along the slice
axis (so every slice is predicted exactly once per in-plane tile, and blending
happens in-plane only). :class:`SliceWiseModel` turns a batch of such 3D tiles
into a batch of 2D images for the wrapped model and back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models import SegmentationModel


class SliceWiseModel(nn.Module):
    """``(N, C, Z, Y, X)`` → ``(N, classes, Z, Y, X)`` by running a 2D model on every slice along ``axis``."""

    def __init__(self, model: SegmentationModel, axis: int):
        super().__init__()
        if model.spatial_dims != 2:
            raise ValueError(f"{model.arch} is not a 2D model")
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
        self.model = model
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        dim = 2 + self.axis
        moved = x.movedim(dim, 1)  # (N, S, C, a, b)
        s, a, b = moved.shape[1], moved.shape[3], moved.shape[4]
        out = self.model(moved.reshape(n * s, c, a, b))
        logits = out["out"] if isinstance(out, dict) else out
        return logits.reshape(n, s, logits.shape[1], a, b).movedim(1, dim)


def slice_tile(tile: int, axis: int) -> tuple[int, int, int]:
    """A 3D tile one slice thick along ``axis`` and ``tile`` wide in-plane."""
    out = [tile, tile, tile]
    out[axis] = 1
    return tuple(out)


def slice_align(factor: int, axis: int) -> Sequence[int]:
    """Grid alignment: the 2D model's downsampling in-plane, 1 along the slice axis."""
    out = [factor, factor, factor]
    out[axis] = 1
    return out
