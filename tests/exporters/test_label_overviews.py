"""The MODE pyramid: per-block majority rules, streaming equals whole-array, COG carries it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.exporters.overviews import ModePyramid, mode_2x2, overview_shapes

NODATA = 255


def _block_majority(block: list[int]) -> int:
    """The rule written out: most votes among valid cells, first in raster order on ties."""
    votes = Counter(v for v in block if v != NODATA)
    if not votes:
        return NODATA
    top = max(votes.values())
    return next(v for v in block if v != NODATA and votes[v] == top)


def _reference(labels: np.ndarray) -> np.ndarray:
    rows, cols = labels.shape
    out = np.empty((-(-rows // 2), -(-cols // 2)), dtype=labels.dtype)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            cells = [
                int(labels[rr, cc]) if rr < rows and cc < cols else NODATA
                for rr in (2 * r, 2 * r + 1)
                for cc in (2 * c, 2 * c + 1)
            ]
            out[r, c] = _block_majority(cells)
    return out


label_maps = arrays(
    np.uint8,
    st.tuples(st.integers(1, 13), st.integers(1, 13)),
    elements=st.sampled_from([0, 1, 2, 3, NODATA]),
)


@given(label_maps)
@settings(max_examples=300, deadline=None)
def test_each_block_takes_its_majority_first_in_raster_order_on_ties(labels):
    assert np.array_equal(mode_2x2(labels, NODATA), _reference(labels))


def test_mode_never_invents_a_class_and_keeps_nodata_only_where_all_is_nodata():
    labels = np.array([[0, 2, NODATA, NODATA], [2, 0, NODATA, 1]], dtype=np.uint8)
    assert mode_2x2(labels, NODATA).tolist() == [[0, 1]]
    assert mode_2x2(np.full((2, 2), NODATA, np.uint8), NODATA).tolist() == [[NODATA]]


@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 70), st.integers(1, 40)),
        elements=st.sampled_from([0, 1, 2, NODATA]),
    ),
    st.lists(st.integers(1, 9), min_size=1, max_size=12),
    st.integers(1, 8),
)
@settings(max_examples=150, deadline=None)
def test_streamed_strips_build_the_same_pyramid_as_the_whole_array(labels, strip_heights, min_size):
    shapes = overview_shapes(labels.shape, min_size)
    levels = [np.full(s, 77, dtype=np.uint8) for s in shapes]

    def sink(level: int, first_row: int, rows: np.ndarray) -> None:
        target = levels[level - 1][first_row : first_row + len(rows)]
        assert (target == 77).all(), "every overview row is written once"
        target[...] = rows

    pyramid = ModePyramid(len(shapes), NODATA, sink)
    start, i = 0, 0
    while start < labels.shape[0]:
        height = strip_heights[i % len(strip_heights)]
        pyramid.push(labels[start : start + height])
        start, i = start + height, i + 1
    pyramid.close()
    expected = labels
    for level, got in zip(shapes, levels):
        expected = mode_2x2(expected, NODATA)
        assert expected.shape == level
        assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((512, 512), []),
        ((513, 100), [(257, 50)]),
        ((8192, 1000), [(4096, 500), (2048, 250), (1024, 125), (512, 63)]),
    ],
)
def test_levels_halve_until_both_sides_fit_one_cog_tile(shape, expected):
    assert overview_shapes(shape, 512) == expected


def test_the_cog_carries_the_pyramid_computed_from_the_labels(tmp_path):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    from pipeline.exporters.cog import Georeference, export_labels_cog
    from pipeline.stores.block_output import BlockOutput
    from pipeline.stores.output import OutputStore
    from pipeline.tiling.blocks import BlockPlan
    from pipeline.tiling.grid import TileGrid

    shape = (1500, 1100)
    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 4, (24, 18)), np.ones((64, 64), dtype=np.uint8))[: shape[0], : shape[1]]
    labels = labels.astype(np.uint8)
    labels[rng.random(shape) < 0.1] = 1
    plan = BlockPlan.create(TileGrid.create(shape, 256, 0.0), 2048, 512)
    store = OutputStore.open_or_create(tmp_path / "o.zarr", plan, 4, False, "x")
    store.write_block(next(iter(plan)), BlockOutput(labels, None))
    geo = Georeference(rasterio.crs.CRS.from_string("EPSG:32633").to_wkt(), (10.0, 0, 500000, 0, -10.0, 0))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    out = export_labels_cog(
        tmp_path / "o.zarr", tmp_path / "o.tif", geo, list("abcd"), colors, {"MODEL": "m@1"}
    )
    assert cog_validate(str(out), strict=True)[0]
    with rasterio.open(out) as dst:
        assert dst.overviews(1) == [2, 4]
        assert np.array_equal(dst.read(1), labels)
        expected = labels
        for factor in dst.overviews(1):
            expected = mode_2x2(expected, int(dst.nodata))
            assert np.array_equal(dst.read(1, out_shape=expected.shape), expected), factor
        assert dst.colormap(1)[2] == (0, 0, 255, 255)
        assert dst.tags()["MODEL"] == "m@1"
        assert dst.crs.to_epsg() == 32633
        assert dst.transform == rasterio.Affine(10.0, 0, 500000, 0, -10.0, 0)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "staging files and the VRT are removed"
