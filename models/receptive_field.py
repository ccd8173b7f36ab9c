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

from dataclasses import dataclass


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
