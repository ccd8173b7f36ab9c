"""Measuring what a model's card does not declare: input channels, downsampling, reach.

Only the network's outputs are looked at (an ONNX model has no gradients), on
inputs thin along every axis but the last:

- *input channels*: the first count the network accepts;
- *downsampling*: the smallest power of two ``f`` whose multiples the network takes,
  and by which shifting the input shifts the logits away from the borders (a network
  that pools ``k`` times commutes with shifts by ``2^k`` only). A network that pads
  its input itself and whose deep path is faint may show a smaller factor than it has
  (the shift error drops below float rounding): that only moves the tiles to other
  phases, and the card can say the true one;
- *reach*: how far a change in one input column shows in the logits, for every
  phase of the stride and two random inputs, rounded up to a multiple of ``f``.

A measured reach is a lower bound: a ReLU that stays off for both inputs hides a
path. Rounding up covers the usual shortfall; a card that declares the reach
(``gigaseg model-card --reach``) is exact.
"""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import CheckpointError

FACTORS = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = (512, 2048, 8192)
THIN = {2: 128, 3: 32}
"""Side of the thin axes when measuring the downsampling (exports may mis-handle maps of one pixel)."""
CHANNEL_GUESSES = (3, 1, 4, 2, *range(5, 17))


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Logits for ``x``, item by item (a fixed batch of one works too); None if the network refuses."""
    try:
        with torch.inference_mode():
            return torch.cat([net(x[i : i + 1]).float() for i in range(x.shape[0])])
    except Exception:  # any refusal (shape, rank, onnxruntime's own errors) means "not this input"
        return None


def _thin(spatial_dims: int, side: int, length: int) -> tuple[int, ...]:
    return (*(side,) * (spatial_dims - 1), length)


def in_channels(net: nn.Module, spatial_dims: int) -> int:
    """The number of input channels ``net`` accepts (tried on a 64-pixel input)."""
    for c in CHANNEL_GUESSES:
        if _forward(net, torch.zeros(1, c, *(64,) * spatial_dims)) is not None:
            return c
    raise CheckpointError("accepts no input of 1–16 channels at 64 pixels a side")


def _size_factor(net: nn.Module, spatial_dims: int, channels: int) -> int:
    """The smallest power of two whose multiples the network takes and keeps (64 + 3f and 64 + 5f pixels)."""
    thin = THIN[spatial_dims]
    for f in FACTORS:
        sizes = (64 + 3 * f, 64 + 5 * f)
        outs = [_forward(net, torch.zeros(1, channels, *_thin(spatial_dims, thin, n))) for n in sizes]
        if all(out is not None and out.shape[-1] == n for out, n in zip(outs, sizes)):
            return f
    raise CheckpointError("takes no input of 64 + 3f pixels for f up to 64, so its downsampling is unknown")


def downsampling(net: nn.Module, spatial_dims: int, channels: int) -> int:
    """The network's downsampling: the smallest power of two, among those whose multiples it takes,
    by which a shift of the input shifts the logits (to float rounding) away from the borders."""
    first = _size_factor(net, spatial_dims, channels)
    gen = torch.Generator().manual_seed(0)
    for length in LENGTHS:
        x = torch.randn(
            1, channels, *_thin(spatial_dims, THIN[spatial_dims], length + FACTORS[-1]), generator=gen
        )
        lo, hi = length * 3 // 8, length * 5 // 8
        for f in (f for f in FACTORS if f >= first):
            pair = _forward(net, torch.cat([x[..., :length], x[..., f : f + length]]))
            if pair is None or pair.shape[-1] != length:
                continue
            a, b = pair[0, ..., lo + f : hi + f], pair[1, ..., lo:hi]
            if float((a - b).abs().max()) <= 1e-6 * float(a.abs().max()):
                return f
    raise CheckpointError("its downsampling could not be measured (not shift-equivariant by 1–64 pixels)")


def _farthest(net: nn.Module, x: torch.Tensor, centre: int, phases: range) -> int | None:
    """Farthest logit column changed by bumping input column ``centre + phase``, over the phases."""
    bumped = x.repeat(len(phases) + 1, *[1] * (x.ndim - 1))
    for i, phase in enumerate(phases, start=1):
        bumped[i, ..., centre + phase] += 10.0
    out = _forward(net, bumped)
    if out is None:
        return None
    base = out[0]
    tolerance = 1e-9 * float(base.abs().max())  # outside its field a logit keeps its bits
    farthest = 0
    for i, phase in enumerate(phases, start=1):
        changed = (out[i] - base).abs().flatten(0, -2).amax(dim=0) > tolerance
        where = torch.nonzero(changed).flatten()
        if where.numel():
            col = centre + phase
            farthest = max(farthest, int(col - where.min()), int(where.max() - col))
    return farthest


def reach(net: nn.Module, spatial_dims: int, channels: int, factor: int) -> int:
    """How far (pixels, last axis) one logit sees, rounded up to a multiple of ``factor``."""
    phases = range(factor) if factor <= 16 else range(0, factor, factor // 16)
    for length in LENGTHS:
        length = -(-length // factor) * factor
        centre = length // 2 // factor * factor
        seen = []
        for seed in (0, 1):
            x = torch.randn(
                1,
                channels,
                *_thin(spatial_dims, 2 * factor, length),
                generator=torch.Generator().manual_seed(seed),
            )
            seen.append(_farthest(net, x, centre, phases))
        if None in seen:
            raise CheckpointError(f"refuses a {length}-pixel input, so its reach could not be measured")
        far = max(s for s in seen if s is not None)
        if far < centre - 2 * factor:  # well inside the input: not cut by its borders
            return -(-far // factor) * factor
    raise CheckpointError(
        "one logit sees farther than 4096 pixels (global pooling or attention?): "
        "declare its reach in the card"
    )
