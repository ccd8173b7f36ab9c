"""Polygons: merged across blocks exactly, areas that add up, holes, minimum area, nodata."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.exporters.polygon_pieces import BlockPolygons
from pipeline.exporters.polygon_stream import Features, ring_block_wkb, stream_features, write_region_stream
from pipeline.exporters.polygons import (
    PolygonOptions,
    Regions,
    VectorTarget,
    clean,
    merge_pieces,
    write_regions,
)

NODATA = 255


def _regions(labels: np.ndarray, top: np.ndarray | None, block: int) -> Regions:
    """Polygonise ``labels`` block by block (``block`` pixels a side) and merge, as an export does."""
    pieces = {}
    for i, r in enumerate(range(0, labels.shape[0], block)):
        for j, c in enumerate(range(0, labels.shape[1], block)):
            part = None if top is None else top[r : r + block, c : c + block]
            pieces[(i, j)] = BlockPolygons.from_labels(
                labels[r : r + block, c : c + block], part, (r, c), NODATA
            )
    return merge_pieces(pieces)


def _as_set(regions: Regions) -> list[tuple]:
    """Each region as (class, pixels, probability sum, normalised geometry without collinear points)."""
    geoms = shapely.normalize(shapely.simplify(regions.geometries, 0))
    return sorted(
        (int(c), int(p), round(float(s), 6), shapely.to_wkt(g))
        for c, p, s, g in zip(regions.classes, regions.pixels, regions.probability_sums, geoms)
    )


@st.composite
def _label_maps(draw):
    rows, cols = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    classes = draw(st.integers(1, 4))
    cells = draw(st.lists(st.integers(0, classes), min_size=rows * cols, max_size=rows * cols))
    labels = np.array(cells, dtype=np.uint8).reshape(rows, cols)
    labels[labels == classes] = NODATA  # the last value stands for nodata
    return labels, draw(st.integers(1, 25))


@settings(max_examples=60, deadline=None)
@given(_label_maps())
def test_polygons_from_blocks_equal_those_of_one_block(case):
    labels, block = case
    top = np.random.default_rng(int(labels.sum())).random(labels.shape).astype(np.float32)
    whole = _regions(labels, top, max(labels.shape))
    blockwise = _regions(labels, top, block)
    assert _as_set(blockwise) == _as_set(whole)
    assert all(g.geom_type == "Polygon" and g.is_valid for g in blockwise.geometries)


def test_areas_add_up_to_the_class_areas_and_nodata_is_no_polygon():
    rng = np.random.default_rng(1)
    labels = np.kron(rng.integers(0, 4, (12, 12)), np.ones((5, 5), dtype=np.int64)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.05] = 2
    labels[20:30, 10:40] = NODATA
    regions = _regions(labels, None, 16)
    areas = shapely.area(regions.geometries)
    for c in range(4):
        assert areas[regions.classes == c].sum() == (labels == c).sum()
        assert regions.pixels[regions.classes == c].sum() == (labels == c).sum()
    assert NODATA not in regions.classes
    nodata_box = shapely.box(10, 20, 40, 30)
    assert shapely.area(shapely.intersection(regions.geometries, nodata_box)).sum() == 0


def _ring_with_island(hole_value: int) -> np.ndarray:
    labels = np.zeros((12, 12), dtype=np.uint8)
    labels[4:7, 4:7] = hole_value  # a 3×3 island inside class 0
    labels[0, 11] = 1  # a one-pixel region at the corner
    return labels


def test_small_regions_merge_into_their_neighbour_or_are_dropped():
    labels = _ring_with_island(2)
    regions = _regions(labels, None, 5)
    merged = clean(regions, PolygonOptions(min_area=4), pixel_area=1.0, pixel_size=1.0)
    assert merged.classes.tolist() == [0, 2]  # the 1-pixel region of class 1 joined class 0
    zero = merged.geometries[merged.classes == 0][0]
    assert zero.area == 144 - 9 and zero.contains(shapely.box(11, 0, 12, 1))
    dropped = clean(regions, PolygonOptions(min_area=4, small="drop"), pixel_area=1.0, pixel_size=1.0)
    assert shapely.area(dropped.geometries).sum() == 143


def test_holes_under_the_area_are_filled_but_never_with_nodata():
    filled = clean(_regions(_ring_with_island(2), None, 5), PolygonOptions(fill_holes=10), 1.0, 1.0)
    assert filled.classes.tolist() == [0, 1]  # the island is gone into its surrounding
    assert shapely.get_num_interior_rings(filled.geometries).tolist() == [0, 0]
    kept = clean(_regions(_ring_with_island(NODATA), None, 5), PolygonOptions(fill_holes=10), 1.0, 1.0)
    assert shapely.get_num_interior_rings(kept.geometries[kept.classes == 0]).tolist() == [1]
    small = clean(_regions(_ring_with_island(2), None, 5), PolygonOptions(fill_holes=9), 1.0, 1.0)
    assert 2 in small.classes.tolist(), "a hole of 9 px is not under 9 px"


def test_simplification_keeps_shared_edges():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    labels = np.kron(labels, np.ones((3, 3), dtype=np.uint8))
    regions = clean(_regions(labels, None, 32), PolygonOptions(simplify=2.0), 1.0, 1.0)
    total = shapely.area(regions.geometries).sum()
    assert total == pytest.approx(shapely.union_all(regions.geometries).area)  # no overlaps
    assert total == pytest.approx(90 * 90)  # no gaps
    assert (
        shapely.get_num_coordinates(regions.geometries).sum()
        < shapely.get_num_coordinates(_regions(labels, None, 32).geometries).sum()
    )


def test_a_ring_closed_across_blocks_keeps_its_speckle_holes_and_the_hole_it_closes():
    labels = np.zeros((40, 40), np.uint8)
    labels[4:36, 4:36] = 1  # a square ring of class 1 around a core of class 0, over four blocks
    labels[12:28, 12:28] = 0
    labels[[6, 6, 33, 30], [6, 33, 6, 31]] = 2  # one speckle hole in each block's piece of the ring
    labels[19, 8] = NODATA  # and a nodata hole on the block edge
    whole, blockwise = _regions(labels, None, 40), _regions(labels, None, 20)
    assert _as_set(blockwise) == _as_set(whole)
    ring = blockwise.geometries[(blockwise.classes == 1)][0]
    assert ring.is_valid and len(ring.interiors) == 6  # the core (closed across blocks), 4 speckles, nodata
    assert _as_set(_streamed(_pieces(labels, None, 20), batch_size=2)) == _as_set(whole)


def _pieces(labels: np.ndarray, top: np.ndarray | None, block: int) -> dict[tuple[int, int], bytes]:
    """Each block's piece as the bytes an actor stores."""
    pieces = {}
    for i, r in enumerate(range(0, labels.shape[0], block)):
        for j, c in enumerate(range(0, labels.shape[1], block)):
            part = None if top is None else top[r : r + block, c : c + block]
            piece = BlockPolygons.from_labels(labels[r : r + block, c : c + block], part, (r, c), NODATA)
            pieces[(i, j)] = piece.to_bytes()
    return pieces


def _streamed(pieces: dict[tuple[int, int], bytes], batch_size: int) -> Regions:
    """The streamed features in pixel coordinates (identity transform), as regions."""
    batches = list(stream_features(lambda: sorted(pieces.items()), (1, 0, 0, 0, 1, 0), batch_size))
    if not batches:
        return Regions(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    columns = [
        np.concatenate(c) for c in zip(*((b.wkb, b.classes, b.pixels, b.probability_sums) for b in batches))
    ]
    for b in batches:
        assert np.array_equal(b.area, b.pixels)  # a pixel-aligned polygon's area is its pixel count
    return Regions(shapely.from_wkb(columns[0]), *columns[1:])


@settings(max_examples=40, deadline=None)
@given(_label_maps(), st.integers(1, 9))
def test_streamed_regions_equal_the_in_memory_merge(case, batch_size):
    labels, block = case
    top = np.random.default_rng(int(labels.sum())).random(labels.shape).astype(np.float32)
    pieces = _pieces(labels, top, block)
    in_memory = merge_pieces({k: BlockPolygons.from_bytes(v) for k, v in pieces.items()})
    assert _as_set(_streamed(pieces, batch_size)) == _as_set(in_memory)


def _features(path) -> list[tuple]:
    """A layer's features as sorted (class, name, pixels, area, mean probability, normalised WKT)."""
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        geometries = shapely.from_wkb(table.pop("geometry"))
    else:
        from pyogrio.raw import read

        meta, _, wkb, values = read(str(path), layer="classes")
        table, geometries = dict(zip(meta["fields"], values)), shapely.from_wkb(wkb)
    geometries = shapely.normalize(shapely.simplify(geometries, 0))
    columns = ("class_id", "class_name", "pixels", "area", "mean_probability")
    return sorted(
        (
            int(c),
            str(n),
            int(p),
            round(float(a), 3),
            round(float(m), 6),
            shapely.to_wkt(g, rounding_precision=3),
        )
        for (c, n, p, a, m), g in zip(zip(*(table[k] for k in columns)), geometries)
    )


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".parquet"])
def test_streamed_layer_has_the_features_of_the_in_memory_layer(tmp_path, suffix):
    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 3, (16, 16)), np.ones((4, 4), dtype=np.int64)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.03] = NODATA
    top = rng.random(labels.shape).astype(np.float32)
    pieces = _pieces(labels, top, 13)
    transform = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    crs = "EPSG:32633"
    from rasterio.crs import CRS

    names, colors = ["a", "b", "c"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    in_memory = merge_pieces({k: BlockPolygons.from_bytes(v) for k, v in pieces.items()})
    whole = write_regions(
        in_memory,
        transform,
        VectorTarget(tmp_path / f"whole{suffix}", CRS.from_string(crs).to_wkt(), names, colors),
    )
    streamed = write_region_stream(
        stream_features(lambda: sorted(pieces.items()), transform, 5),
        VectorTarget(tmp_path / f"streamed{suffix}", CRS.from_string(crs).to_wkt(), names, colors),
    )
    assert _features(streamed) == _features(whole) and len(_features(whole)) > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [whole.name, streamed.name] + ([] if suffix == ".gpkg" else ["whole.qml", "streamed.qml"])
    )


def test_a_stream_that_fails_midway_leaves_no_layer(tmp_path):
    def batches():
        one = np.array([1])
        yield Features(
            shapely.to_wkb(np.array([shapely.box(0, 0, 1, 1)])), one * 0, one, one * 1.0, one * 1.0
        )
        raise OSError("a piece could not be read")

    target = VectorTarget(tmp_path / "out.gpkg", None, ["a"], [(1, 2, 3)])
    with pytest.raises(OSError):
        write_region_stream(batches(), target)
    assert list(tmp_path.iterdir()) == []


@st.composite
def _polygons_with_holes(draw):
    """A box with up to 6 square holes at random places inside it (ring lengths vary by
    collinear points added along the exterior)."""
    x0, y0 = draw(st.integers(-1000, 1000)), draw(st.integers(-1000, 1000))
    size = draw(st.integers(20, 60))
    extra = draw(st.integers(0, 5))
    top = [(x0 + size * k / (extra + 1), y0 + size) for k in range(extra + 1)]
    exterior = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), *reversed(top[1:]), (x0, y0 + size)]
    holes = []
    for i in range(draw(st.integers(0, 6))):
        hx, hy = x0 + 2 + 3 * i, y0 + 2 + draw(st.integers(0, size - 6))
        holes.append([(hx, hy), (hx, hy + 1), (hx + 1, hy + 1), (hx + 1, hy)])
    return shapely.Polygon(exterior, holes)


@settings(max_examples=60, deadline=None)
@given(_polygons_with_holes())
def test_ring_blocks_make_the_wkb_shapely_makes(polygon):
    import struct

    rings = shapely.get_rings(polygon)
    body = ring_block_wkb(shapely.get_coordinates(rings), shapely.get_num_coordinates(rings))
    assert struct.pack("<BII", 1, 3, len(rings)) + body == shapely.to_wkb(polygon, byte_order=1)


def test_a_region_across_every_block_is_one_feature_with_every_hole(tmp_path):
    """Its holes wait in the spill file (in ``tmp_path``) until its last block."""
    labels = np.zeros((60, 60), dtype=np.uint8)
    labels[5:55:4, 5:55:4] = 1  # 13 × 13 one-pixel holes, in every block
    pieces = _pieces(labels, None, 16)
    batches = list(stream_features(lambda: sorted(pieces.items()), (2, 0, 100, 0, -2, 500), 3, tmp_path))
    region = [shapely.from_wkb(w) for b in batches for w, c in zip(b.wkb, b.classes) if c == 0]
    assert len(region) == 1 and region[0].is_valid and len(region[0].interiors) == 169
    assert region[0].area == (60 * 60 - 169) * 4 and region[0].bounds == (100, 380, 220, 500)
    assert sum(int(b.pixels[b.classes == 1].sum()) for b in batches) == 169
