"""Padding a tile that runs past the scene edge: the scene's own pixels, mirrored.

Tiles are padded on their far side only (a tile starts inside the scene), by
reflection, or by repeating the edge pixel where an axis is too short to reflect.

>>> import torch
>>> pad_far_side(torch.tensor([[1.0, 2.0, 3.0]]), (5,)).tolist()
[[1.0, 2.0, 3.0, 2.0, 1.0]]
>>> pad_far_side(torch.tensor([[1.0, 2.0]]), (5,)).tolist()
[[1.0, 2.0, 2.0, 2.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_far_side(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad the far side of a ``(C, *have)`` tensor up to ``(C, *size)``: reflect, else replicate."""
    have = x.shape[1:]
    pads: list[int] = []
    for n, want in zip(reversed(have), reversed(size)):
        pads.extend([0, want - n])
    if not any(pads):
        return x
    reflect = all(p < n for p, n in zip(pads[1::2], reversed(have)))
    # F.pad's reflect/replicate need a batch axis for N-D inputs.
    return F.pad(x.unsqueeze(0), pads, mode="reflect" if reflect else "replicate").squeeze(0)
