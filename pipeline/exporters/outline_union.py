"""The union of a joined region's outlines, by its pixel edges rather than a geometry overlay.

A region that crosses block sides comes as pieces, one per block, whose outlines are rings
along pixel edges (integer coordinates, axis-aligned segments). Where two pieces meet across
a block side they share edges, traversed in opposite directions. Split into unit segments
there (:func:`split_on_box`, when each piece is read), those shared edges cancel in pairs;
what is left is the region's boundary, which is linked back into rings: one exterior and the
holes the region closes across blocks. A vertex where the region touches itself corner to
corner (4-connectivity: not connected there) has two ways on; where a ring comes back to
such a vertex, the loop it made is cut off as a ring of its own, so no ring touches itself
and the polygon is valid (a hole may touch the exterior or another hole at a vertex, as in
GEOS's output). Collinear vertices are dropped.

This is GEOS's union of the outlines, for pixel-aligned rings only, at the cost of sorting
the segments: the overlay of a region as large as a 1 Gpx scene needs several times the
memory of its coordinates.

>>> import numpy as np
>>> left = np.array([[0, 0], [0, 2], [2, 2], [2, 0], [0, 0]], float)  # x = column, y = row
>>> right = left + [2, 0]
>>> pieces = [split_on_box(left, (0, 0, 2, 2)), split_on_box(right, (2, 0, 4, 2))]
>>> points, sizes = union_of_outlines(np.concatenate(pieces), np.array([len(p) for p in pieces]))
>>> points.tolist(), sizes.tolist()
([[0.0, 0.0], [0.0, 2.0], [4.0, 2.0], [4.0, 0.0], [0.0, 0.0]], [5])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_on_box(ring: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """A closed ring ``(n, 2)`` with its segments that lie on a side of ``box`` (x0, y0, x1, y1:
    the block's bounds in pixel coordinates) split into unit segments, so that a piece of the
    next block sharing part of that side has the same segments there."""
    x0, y0, x1, y1 = box
    a, b = ring[:-1], ring[1:]
    vertical = a[:, 0] == b[:, 0]
    on_side = np.where(vertical, np.isin(a[:, 0], (x0, x1)), np.isin(a[:, 1], (y0, y1)))
    lengths = np.where(on_side, np.abs(b - a).sum(axis=1).astype(np.int64), 1)
    segment = np.repeat(np.arange(len(a)), lengths)
    step = np.arange(segment.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    points = a[segment] + np.sign(b - a)[segment] * step[:, None]
    return np.concatenate([points, ring[-1:]])


def union_of_outlines(points: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of pixel-aligned outline rings (closed, one orientation, split on the block
    sides they share) as rings: ``(points, sizes)``, the exterior first, then the holes.

    Raises ValueError when the rings do not make one polygon (more than one exterior).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    ends = np.cumsum(sizes)
    orientation = np.sign(_signed_area(points[ends[0] - sizes[0] : ends[0]]))
    grid = points.astype(np.int32)
    ids = _point_ids(grid)
    heads = np.ones(len(points), dtype=bool)
    heads[ends - 1] = False
    heads = np.flatnonzero(heads)
    start, end = ids[heads], ids[heads + 1]
    del ids
    kept = ~_cancelled(start, end)
    heads, start, end = heads[kept], start[kept], end[kept]
    a, b = grid[heads], grid[heads + 1]
    del grid, heads, kept
    following, at_fork = _following(a, b, start, end, orientation)
    cycles, ring_sizes = _rings(following, start, at_fork)

    direction = np.sign(b - a)[cycles]
    ring_start = np.cumsum(ring_sizes) - ring_sizes
    previous = np.arange(len(cycles)) - 1
    previous[ring_start] = ring_start + ring_sizes - 1
    corner = (direction != direction[previous]).any(axis=1)
    corners = np.add.reduceat(corner.astype(np.int64), ring_start)
    vertices = a[cycles][corner].astype(np.float64)
    first = np.cumsum(corners) - corners
    closed = np.insert(vertices, first + corners, vertices[first], axis=0)
    closed_sizes = corners + 1

    ring_ends = np.cumsum(closed_sizes)
    signs = np.array([np.sign(_signed_area(closed[e - n : e])) for e, n in zip(ring_ends, closed_sizes)])
    exterior = np.flatnonzero(signs == orientation)
    if len(exterior) != 1:
        raise ValueError(f"the outlines make {len(exterior)} polygons, not one")
    order = [int(exterior[0]), *np.flatnonzero(signs != orientation).tolist()]
    pieces = [closed[ring_ends[k] - closed_sizes[k] : ring_ends[k]] for k in order]
    return np.concatenate(pieces), closed_sizes[order]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0] - ring[0, 0], ring[:, 1] - ring[0, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def _point_ids(grid: np.ndarray) -> np.ndarray:
    """One integer per grid point ``(x, y)``."""
    low = grid.min(axis=0).astype(np.int64)
    rows = int(grid[:, 1].max()) - int(low[1]) + 1
    return (grid[:, 0] - low[0]) * rows + (grid[:, 1] - low[1])


def _cancelled(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Segments traversed both ways (an edge two pieces share): True for both."""
    low, high = np.minimum(start, end), np.maximum(start, end)
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    same = (low[1:] == low[:-1]) & (high[1:] == high[:-1])
    del low, high
    forward = (start < end)[order]
    if (forward[1:][same] == forward[:-1][same]).any():
        raise ValueError("two outline segments run the same way along one edge")
    cancelled = np.zeros(len(start), dtype=bool)
    cancelled[order[1:][same]] = True
    cancelled[order[:-1][same]] = True
    return cancelled


def _following(
    a: np.ndarray, b: np.ndarray, start: np.ndarray, end: np.ndarray, orientation: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per segment, the segment that follows it (at a vertex with two ways on, the turn toward
    the region: left of the way for a positive ``orientation``; :func:`_rings` corrects the
    choice where it makes a ring touch itself), and whether the segment leaves such a vertex."""
    by_start = np.argsort(start, kind="stable")
    sorted_start = start[by_start]
    lo = np.searchsorted(sorted_start, end, side="left")
    count = np.searchsorted(sorted_start, end, side="right") - lo
    if count.min() < 1 or count.max() > 2:
        raise ValueError("the outline segments do not close into rings")
    following = by_start[lo]
    fork = np.flatnonzero(count == 2)
    if fork.size:
        one, other = by_start[lo[fork]], by_start[lo[fork] + 1]
        way = np.sign(b[fork] - a[fork])

        def turn(choice: np.ndarray) -> np.ndarray:
            out = np.sign(b[choice] - a[choice])
            return orientation * (way[:, 0] * out[:, 1] - way[:, 1] * out[:, 0])

        following[fork] = np.where(turn(one) > turn(other), one, other)
    if np.bincount(following, minlength=len(following)).max() > 1:
        raise ValueError("the outline segments do not close into rings")
    at_fork = np.zeros(len(following), dtype=bool)
    at_fork[following[fork]] = True
    return following, at_fork


def _rings(following: np.ndarray, start: np.ndarray, at_fork: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rings the segments make: segment indices ring by ring, and each ring's length.

    Each cycle of ``following`` is walked once; where it comes back to a fork vertex
    (``at_fork``: the segment leaves one) it touches itself, and the loop since the first
    visit is cut off as a ring of its own, so that no ring passes a vertex twice.
    """
    n = len(following)
    step = memoryview(np.ascontiguousarray(following, dtype=np.int64))
    starts = memoryview(np.ascontiguousarray(start, dtype=np.int64))
    fork = bytes(at_fork.astype(np.uint8))
    seen = bytearray(n)
    ring = np.empty(n, dtype=np.int64)
    held = memoryview(ring)
    order = np.empty(n, dtype=np.int64)
    written = 0
    sizes: list[int] = []
    for first in range(n):
        if seen[first]:
            continue
        top = 0
        visits: dict[int, tuple[int, int]] = {}
        i = first
        while not seen[i]:
            seen[i] = 1
            if fork[i]:
                at, segment = visits.get(starts[i], (-1, -1))
                if 0 <= at < top and held[at] == segment:
                    order[written : written + top - at] = ring[at:top]
                    written += top - at
                    sizes.append(top - at)
                    top = at
                visits[starts[i]] = (top, i)
            held[top] = i
            top += 1
            i = step[i]
        order[written : written + top] = ring[:top]
        written += top
        sizes.append(top)
    return order, np.asarray(sizes, dtype=np.int64)
