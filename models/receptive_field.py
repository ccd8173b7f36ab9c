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
