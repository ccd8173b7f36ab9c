"""Region helpers: slicing by a region is the same whatever origin the array has."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.tiling import regions


@st.composite
def nested_regions(draw):
    """An outer region inside a scene and an inner region inside the outer one."""
    dims = draw(st.integers(1, 3))
    outer, inner = [], []
    for _ in range(dims):
        a = draw(st.integers(0, 20))
        b = draw(st.integers(a + 1, a + 20))
        c = draw(st.integers(a, b - 1))
        d = draw(st.integers(c + 1, b))
        outer.append((a, b))
        inner.append((c, d))
    return tuple(outer), tuple(inner)


@given(nested_regions())
def test_cutting_inside_an_outer_array_equals_cutting_the_scene(pair):
    outer, inner = pair
    scene = np.arange(np.prod([b for _, b in outer])).reshape([b for _, b in outer])
    held = scene[regions.slices(outer)]
    assert np.array_equal(held[regions.within(inner, outer)], scene[regions.slices(inner)])
    assert held[regions.within(inner, outer)].shape == regions.shape(inner)


@given(nested_regions())
def test_intersection_with_a_containing_region_is_the_region(pair):
    outer, inner = pair
    assert regions.intersect(inner, outer) == inner
    assert regions.intersect(outer, regions.whole([b for _, b in outer])) == outer


def test_unit_keeps_every_axis():
    a = np.zeros((3, 4, 5))
    assert a[regions.unit((1, 2, 3))].shape == (1, 1, 1)
