"""Regions: half-open boxes in scene pixels, and the few operations every module needs on them.

A region is a tuple of ``(start, stop)`` pairs, one per spatial axis, in scene pixel
(or voxel) coordinates. Every module that cuts an array by a region goes through
these helpers rather than writing the slicing out again.

>>> import numpy as np
>>> a = np.arange(36).reshape(6, 6)
>>> a[slices(((1, 3), (2, 4)))].tolist()
[[8, 9], [14, 15]]
>>> local(((3, 5), (4, 6)), origin=(2, 2))
(slice(1, 3, None), slice(2, 4, None))
>>> intersect(((0, 4), (0, 4)), ((2, 6), (3, 9)))
((2, 4), (3, 4))
>>> shape(((2, 4), (3, 9)))
(2, 6)
"""

from __future__ import annotations

from collections.abc import Sequence

Region = tuple[tuple[int, int], ...]
"""Half-open ``(start, stop)`` per axis, in scene pixel coordinates."""


def slices(region: Region) -> tuple[slice, ...]:
    """The region as slices of an array whose index 0 is the scene's origin."""
    return tuple(slice(a, b) for a, b in region)


def local(region: Region, origin: Sequence[int]) -> tuple[slice, ...]:
    """The region as slices of an array whose index 0 sits at ``origin`` in scene pixels."""
    return tuple(slice(a - o, b - o) for (a, b), o in zip(region, origin))


def within(region: Region, outer: Region) -> tuple[slice, ...]:
    """The region as slices of an array holding ``outer`` (``outer`` must contain ``region``)."""
    return local(region, [a for a, _ in outer])


def intersect(a: Region, b: Region) -> Region:
    """The overlap of two regions (empty along an axis where ``stop <= start``)."""
    return tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))


def shape(region: Region) -> tuple[int, ...]:
    """Size along each axis."""
    return tuple(b - a for a, b in region)


def whole(shape: Sequence[int]) -> Region:
    """The region covering an array of ``shape``."""
    return tuple((0, n) for n in shape)


def unit(index: Sequence[int]) -> tuple[slice, ...]:
    """Slices picking the one element at ``index`` while keeping every axis (``a[i:i+1, j:j+1]``)."""
    return tuple(slice(i, i + 1) for i in index)
