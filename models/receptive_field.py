"""Receptive-field arithmetic, used by every architecture to declare its reach.

The tiled engine sizes its halo from ``reach``: the farthest an output pixel can
see, in input pixels, on each side. For a stack of *centred* operations (odd
kernel ``k``, padding ``(k - 1) / 2 · d``, stride ``s``), the feature at grid
index ``i`` sits over input pixel ``jump · i`` and each operation widens the
window by ``(k - 1) / 2 · dilation · jump``, where ``jump`` is the product of the
strides before it. :class:`Reach` accumulates exactly that, so a backbone can
compute its reach from the same layer plan it is built from. Operations that are
not centred (2×2 poolings, transposed convolutions) are accounted for by the
architectures that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Reach:
    """Running receptive-field radius (input pixels) and stride of a feature map."""

    reach: int = 0
    jump: int = 1

    def conv(self, kernel: int = 3, stride: int = 1, dilation: int = 1) -> Reach:
        """A centred convolution or pooling: widen by its radius, then apply its stride."""
        if kernel % 2 != 1:
            raise ValueError("centred operations have odd kernels")
        self.reach += (kernel - 1) // 2 * dilation * self.jump
        self.jump *= stride
        return self

    def upsample(self, factor: int) -> Reach:
        """Aligned bilinear upsampling by ``factor`` (see ``models.deeplab.upsample_aligned``).

        An output pixel interpolates the two coarse pixels that bracket it; the
        farther one is at most ``(factor - 1)`` fine steps away.
        """
        if self.jump % factor:
            raise ValueError(f"cannot upsample a stride-{self.jump} map by {factor}")
        fine = self.jump // factor
        self.reach += (factor - 1) * fine
        self.jump = fine
        return self

    def copy(self) -> Reach:
        """An independent copy (for branching paths)."""
        return Reach(self.reach, self.jump)


# --- exact reach of chains of non-centred operations ----------------------------------
#
# 2×2 poolings, transposed convolutions and index unpooling do not sit centred over
# their inputs, so their receptive field depends on the output pixel's phase within
# the stride. :func:`chain_reach` walks a chain of such operations backwards: an
# interval of output indices maps to the interval of input indices it reads, exactly.
# Each operation is a tuple; the chain runs from the network's input to its output.


def conv(kernel: int = 3, stride: int = 1, padding: int | None = None, dilation: int = 1) -> tuple:
    """A convolution or pooling (``padding`` defaults to "same" for odd kernels)."""
    if padding is None:
        padding = (kernel - 1) // 2 * dilation
    return ("conv", kernel, stride, padding, dilation)


def tconv(kernel: int, stride: int, padding: int = 0) -> tuple:
    """A transposed convolution (``output_padding`` only adds size, not connections)."""
    return ("tconv", kernel, stride, padding)


def unpool(factor: int) -> tuple:
    """Max-unpooling / nearest upsampling: output ``o`` reads input ``o // factor``."""
    return ("unpool", factor)


def aligned_upsample(factor: int) -> tuple:
    """:func:`models.deeplab.upsample_aligned`: output ``o`` reads ``⌊o/f⌋`` and ``⌈o/f⌉``."""
    return ("aligned", factor)


def _back(op: tuple, lo: int, hi: int) -> tuple[int, int]:
    kind = op[0]
    if kind == "conv":
        _, k, s, p, d = op
        return s * lo - p, s * hi - p + d * (k - 1)
    if kind == "tconv":
        _, k, s, p = op
        return -(-(lo + p - k + 1) // s), (hi + p) // s
    if kind == "unpool":
        return lo // op[1], hi // op[1]
    if kind == "aligned":
        return lo // op[1], -(-hi // op[1])
    raise ValueError(f"unknown operation {op!r}")


def chain_reach(*chains: list[tuple], factor: int) -> int:
    """Largest distance an output pixel sees along any of ``chains``, over all stride phases.

    Every chain leads from the input to the output (a skip connection is its
    own chain); ``factor`` is the network's total downsampling, the period of
    its phases.
    """
    reach = 0
    base = factor * 1_000_003
    for chain in chains:
        for phase in range(factor):
            o = base + phase
            lo, hi = o, o
            for op in reversed(chain):
                lo, hi = _back(op, lo, hi)
            reach = max(reach, o - lo, hi - o)
    return reach


# --- exact reach of any network, by interval arithmetic on a 1-D line ------------------
#
# Multi-path networks (fusion of several resolutions, residual streams next to pooling
# streams) have too many input-to-output chains to list. :class:`Span` instead runs the
# network's wiring along one axis: every index of a feature map carries the hull of input
# pixels it reads, and each operation combines its inputs' hulls. An architecture writes
# its reach as a function that mirrors its forward pass on spans; :func:`span_reach`
# runs it on a line long enough that the borders do not matter. Global poolings and
# attention are left out, as everywhere: the reach covers the local part of a network.


class Span:
    """A 1-D feature map's wiring: index ``i`` reads input pixels ``lo[i] … hi[i]``."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lo, self.hi = lo, hi

    @classmethod
    def centred(cls, length: int, field: Reach) -> Span:
        """A map at stride ``field.jump`` over ``length`` pixels, index ``i`` seeing ``field.reach``
        pixels either side of pixel ``jump · i`` (a backbone described by :class:`Reach`)."""
        centre = np.arange(length // field.jump, dtype=np.int64) * field.jump
        return cls(centre - field.reach, centre + field.reach)

    @classmethod
    def line(cls, length: int) -> Span:
        """The input itself: pixel ``i`` reads pixel ``i``."""
        index = np.arange(length, dtype=np.int64)
        return cls(index, index.copy())

    def __len__(self) -> int:
        return len(self.lo)

    def conv(self, kernel: int = 3, stride: int = 1, dilation: int = 1, padding: int | None = None) -> Span:
        """Convolution or pooling (``padding`` defaults to "same" for odd kernels, 0 for even ones;
        it may be negative)."""
        if padding is None:
            padding = (kernel - 1) // 2 * dilation if kernel % 2 else 0
        n = len(self)
        count = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        out = np.arange(count) * stride - padding
        lo = np.full(count, np.iinfo(np.int64).max)
        hi = np.full(count, np.iinfo(np.int64).min)
        for t in range(kernel):
            src = out + dilation * t
            ok = (src >= 0) & (src < n)
            lo[ok] = np.minimum(lo[ok], self.lo[src[ok]])
            hi[ok] = np.maximum(hi[ok], self.hi[src[ok]])
        return Span(lo, hi)

    pool = conv

    def upsample(self, factor: int) -> Span:
        """:func:`models.deeplab.upsample_aligned`: output ``o`` interpolates ``⌊o/f⌋`` and ``⌈o/f⌉``."""
        n = len(self)
        o = np.arange(n * factor)
        a, b = o // factor, np.minimum(-(-o // factor), n - 1)
        return Span(np.minimum(self.lo[a], self.lo[b]), np.maximum(self.hi[a], self.hi[b]))

    def unpool(self, factor: int) -> Span:
        """Nearest-neighbour upsampling (or max-unpooling): output ``o`` reads ``o // factor``."""
        return Span(np.repeat(self.lo, factor), np.repeat(self.hi, factor))

    def resize_down(self, factor: int) -> Span:
        """Bilinear downsampling by ``factor`` (``align_corners=False``): reads around ``f·o + (f-1)/2``."""
        if factor % 2:
            return self.conv(1, factor, padding=-(factor // 2))
        return self.conv(2, factor, padding=-(factor // 2 - 1))

    def tconv(self, kernel: int, stride: int, padding: int = 0, output_padding: int = 0) -> Span:
        """Transposed convolution: output ``o`` reads inputs ``i`` with ``o = s·i - p + t``."""
        n = len(self)
        count = (n - 1) * stride - 2 * padding + kernel + output_padding
        lo = np.full(count, np.iinfo(np.int64).max)
        hi = np.full(count, np.iinfo(np.int64).min)
        for t in range(kernel):
            o = np.arange(n) * stride - padding + t
            ok = (o >= 0) & (o < count)
            np.minimum.at(lo, o[ok], self.lo[ok])
            np.maximum.at(hi, o[ok], self.hi[ok])
        return Span(lo, hi)

    def __or__(self, other: Span) -> Span:
        """Sum or concatenation of two maps of the same size: each index reads both."""
        if len(self) != len(other):
            raise ValueError(f"merging maps of sizes {len(self)} and {len(other)}")
        return Span(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def reach(self) -> int:
        """Farthest any index of the middle third sees, in pixels (the map must be at stride 1)."""
        n = len(self)
        o = np.arange(n // 3, n - n // 3)
        return int(max((o - self.lo[o]).max(), (self.hi[o] - o).max()))


def span_reach(network: Callable[[Span], Span], factor: int, length: int = 4096) -> int:
    # ``network`` may ignore its argument's wiring and use only its length (see Span.centred).
    """Reach of ``network`` (a function mirroring a forward pass on spans), free of border effects."""
    while True:
        n = -(-length // factor) * factor
        out = network(Span.line(n))
        if len(out) != n:
            raise ValueError(f"the span network maps {n} pixels to {len(out)}")
        reach = out.reach()
        if 3 * reach < n // 3:
            return reach
        length *= 4
