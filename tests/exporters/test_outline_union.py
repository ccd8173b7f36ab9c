"""The union of a joined region's outlines by its pixel edges: what GEOS's overlay makes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.exporters.outline_union import split_on_box, union_of_outlines
from pipeline.exporters.polygon_pieces import BlockPolygons

NODATA = 255


def _outline_union(labels: np.ndarray, block: int, value: int) -> list[shapely.Polygon]:
    """Per region of class ``value``: (the edge union, GEOS's union) of its pieces' outlines.

    Pieces of one class that touch across a block side are grouped by the whole-map
    labelling (each 4-connected region of the map is one group)."""
    from skimage.measure import label

    whole = label(labels == value, background=0, connectivity=1)
    groups: dict[int, list[tuple[np.ndarray, tuple[int, int, int, int]]]] = {}
    for r in range(0, labels.shape[0], block):
        for c in range(0, labels.shape[1], block):
            part = labels[r : r + block, c : c + block]
            piece = BlockPolygons.from_labels(part, None, (r, c), NODATA)
            for geometry, cls in zip(shapely.from_wkb(piece.geometries), piece.classes):
                if cls != value:
                    continue
                inside = shapely.get_coordinates(shapely.point_on_surface(geometry))[0]
                region = int(whole[int(inside[1]), int(inside[0])])
                box = (c, r, c + part.shape[1], r + part.shape[0])
                groups.setdefault(region, []).append((shapely.get_coordinates(geometry.exterior), box))
    pairs = []
    for pieces in groups.values():
        rings = [split_on_box(ring, box) for ring, box in pieces]
        points, sizes = union_of_outlines(np.concatenate(rings), np.array([len(r) for r in rings]))
        rings = [points[e - n : e] for e, n in zip(np.cumsum(sizes), sizes)]
        ours = shapely.Polygon(rings[0], rings[1:])
        theirs = shapely.union_all([shapely.Polygon(ring) for ring, _ in pieces])
        pairs.append((ours, theirs))
    return pairs


def _same(a: shapely.Geometry, b: shapely.Geometry) -> bool:
    norm = lambda g: shapely.normalize(shapely.simplify(g, 0))  # noqa: E731
    return shapely.equals_exact(norm(a), norm(b), 0)


def test_a_hole_closed_across_blocks_and_touching_the_exterior_at_a_corner():
    labels = np.array(
        [
            [255, 0, 0, 0, 0, 255, 255, 0, 0],
            [0, 0, 0, 255, 0, 0, 0, 255, 0],
            [0, 255, 0, 0, 0, 255, 0, 255, 0],
            [255, 0, 255, 255, 0, 255, 255, 0, 255],
            [255, 0, 0, 0, 0, 0, 255, 0, 255],
        ],
        dtype=np.uint8,
    )
    for ours, theirs in _outline_union(labels, 4, 0):
        assert ours.is_valid and _same(ours, theirs)
    assert any(len(ours.interiors) >= 2 for ours, _ in _outline_union(labels, 4, 0))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 20),
    st.integers(2, 20),
    st.integers(1, 9),
    st.floats(0.3, 0.8),
    st.integers(0, 2**32 - 1),
)
def test_the_edge_union_is_geos_union_for_any_map_and_block(rows, cols, block, share, seed):
    labels = (np.random.default_rng(seed).random((rows, cols)) < share).astype(np.uint8)
    for ours, theirs in _outline_union(labels, block, 1):
        assert ours.is_valid
        assert _same(ours, theirs)


def test_outlines_of_two_separate_regions_are_refused():
    square = np.array([[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]], float)
    rings = [square, square + 5]
    with pytest.raises(ValueError, match="2 polygons"):
        union_of_outlines(np.concatenate(rings), np.array([5, 5]))
