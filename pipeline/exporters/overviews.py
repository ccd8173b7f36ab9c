"""Class-map overviews: a 2×2 MODE pyramid built in one streaming pass over the labels.

A class map must be reduced by majority, never averaged or interpolated. GDAL's
MODE resampling does that, but in a COG copy it re-reads the full-resolution raster
for every level through a generic kernel (the cost is in bench/RESULTS.md). The
same pyramid is a handful of vectorised comparisons per 2×2 block when computed
while the labels stream past once, level by level, holding a few rows per level.

The rule, at every level from the level below: the most frequent valid value of
each 2×2 block; on a tie, the first of the tied values in raster order (top-left,
top-right, bottom-left, bottom-right); nodata only where all four are nodata.
Blocks cut by an odd edge count the missing pixels as nodata.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RowSink = Callable[[int, int, np.ndarray], None]
"""Receives ``(level, first_row, rows)``: finished rows of overview ``level`` (1 = ½ size)."""


def overview_shapes(shape: tuple[int, int], min_size: int) -> list[tuple[int, int]]:
    """Sizes of the halving levels until both sides are at most ``min_size`` (GDAL's COG rule)."""
    shapes: list[tuple[int, int]] = []
    rows, cols = shape
    while max(rows, cols) > min_size:
        rows, cols = -(-rows // 2), -(-cols // 2)
        shapes.append((rows, cols))
    return shapes


def mode_2x2(labels: np.ndarray, nodata: int) -> np.ndarray:
    """The majority of every 2×2 block of a 2-D class map (rules in the module docstring)."""
    rows, cols = labels.shape
    if rows % 2 or cols % 2:
        padded = np.full((rows + rows % 2, cols + cols % 2), nodata, dtype=labels.dtype)
        padded[:rows, :cols] = labels
        labels = padded
    half_rows, half_cols = labels.shape[0] // 2, labels.shape[1] // 2
    # The four corners of every block as contiguous planes (strided views are ~1.5× slower).
    corners = np.ascontiguousarray(labels.reshape(half_rows, 2, half_cols, 2).transpose(1, 3, 0, 2))
    a, b, c, d = corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]
    va, vb, vc = a != nodata, b != nodata, c != nodata
    # Lowest precedence first, each later rule overriding: all valid values distinct →
    # the first valid one; c = d → c; b paired with c or d → b; a paired with anyone → a.
    # With four cells a value paired with another has the most votes unless an
    # earlier value is paired too, and then the earlier one wins the tie.
    out = np.where(vc, c, d)
    np.copyto(out, b, where=vb)
    np.copyto(out, a, where=va)
    pair = c == d
    pair &= vc
    np.copyto(out, c, where=pair)
    pair = b == c
    pair |= b == d
    pair &= vb
    np.copyto(out, b, where=pair)
    pair = a == b
    pair |= a == c
    pair |= a == d
    pair &= va
    np.copyto(out, a, where=pair)
    return out


class ModePyramid:
    """Feeds full-width row strips of the labels through every overview level.

    ``push`` takes the next rows of the full-resolution raster; each level keeps at
    most one row that waits for its partner, so memory is a strip per level.
    ``close`` flushes the odd last rows. ``sink`` receives finished overview rows.
    """

    def __init__(self, levels: int, nodata: int, sink: RowSink) -> None:
        self.levels = levels
        self.nodata = nodata
        self.sink = sink
        self._pending: list[np.ndarray | None] = [None] * levels
        self._next_row = [0] * (levels + 1)

    def push(self, rows: np.ndarray) -> None:
        """Add the next rows of level 0 (full resolution)."""
        self._feed(0, rows, final=False)

    def close(self) -> None:
        """Finish every level (the last odd row of a level pairs with nodata)."""
        for level in range(self.levels):
            self._feed(level, None, final=True)

    def _feed(self, level: int, rows: np.ndarray | None, final: bool) -> None:
        if level >= self.levels:
            return
        held = self._pending[level]
        parts = [p for p in (held, rows) if p is not None and len(p)]
        if not parts:
            return
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        usable = len(block) if final else len(block) - len(block) % 2
        self._pending[level] = block[usable:] if usable < len(block) else None
        if usable == 0:
            return
        reduced = mode_2x2(block[:usable], self.nodata)
        start = self._next_row[level + 1]
        self._next_row[level + 1] += len(reduced)
        self.sink(level + 1, start, reduced)
        self._feed(level + 1, reduced, final=False)
