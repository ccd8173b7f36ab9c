"""Polygons merged and written in one pass over the blocks, holding only the regions still open.

The in-memory merge (:func:`pipeline.exporters.polygons.merge_pieces`) holds every region
of the scene, which cleaning needs: a minimum area, hole filling and simplification look
at neighbours anywhere. Without cleaning, a region is final as soon as the last block
holding a piece of it has been read. So the export reads the pieces twice: first their
sides (which regions join across blocks, and the block where each joined region ends),
then the pieces again in the same order, writing each region as soon as it is final.
Memory holds the sides, a few numbers per region, one piece, and the joined regions that
continue into blocks not yet read; features come in block order (a joined region at the
block where it ends). The polygons are those of the in-memory merge.

>>> import numpy as np
>>> from pipeline.exporters.polygon_pieces import BlockPolygons
>>> labels = np.array([[0, 0, 1, 1], [2, 0, 1, 1]], np.uint8)
>>> blocks = {(0, j): BlockPolygons.from_labels(labels[:, 2 * j : 2 * j + 2], None, (0, 2 * j), 255)
...           for j in range(2)}
>>> load = lambda: ((index, piece.to_bytes()) for index, piece in sorted(blocks.items()))
>>> [(r.classes.tolist(), r.pixels.tolist()) for r in stream_regions(load)]
[([0, 2, 1], [3, 1, 4])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import shapely

from pipeline.exporters.polygon_pieces import BlockPolygons
from pipeline.exporters.polygons import (
    LAYER,
    Regions,
    VectorTarget,
    feature_fields,
    geoparquet_metadata,
    joined_roots,
    staged_vector,
    to_crs,
)

PieceSource = Callable[[], Iterable[tuple[tuple[int, ...], bytes]]]
"""Yields every block's piece (index, bytes) in one fixed order each time it is called."""


def stream_regions(load: PieceSource, batch_size: int = 20_000) -> Iterator[Regions]:
    """The scene's regions (pixel coordinates) in batches, each region once it is final."""
    sides: dict[tuple[int, int], BlockPolygons] = {}
    offsets: dict[tuple[int, int], int] = {}
    order: list[tuple[int, int]] = []
    classes, pixels, sums, total = [], [], [], 0
    for index, data in load():
        piece = BlockPolygons.from_bytes(data)
        key = (int(index[0]), int(index[1]))
        order.append(key)
        offsets[key] = total
        total += len(piece.classes)
        piece.geometries = np.empty(0, dtype=object)
        sides[key] = piece
        classes.append(piece.classes)
        pixels.append(piece.pixels)
        sums.append(piece.probability_sums)
    if not total:
        return
    roots = joined_roots(sides, offsets)
    members = np.bincount(roots, minlength=total)
    ends = np.zeros(total, dtype=np.int64)
    block_of = np.repeat(np.arange(len(order)), [len(sides[key].classes) for key in order])
    np.maximum.at(ends, roots, block_of)
    merged_pixels = np.bincount(roots, weights=np.concatenate(pixels), minlength=total).astype(np.int64)
    merged_sums = np.bincount(roots, weights=np.concatenate(sums), minlength=total)
    classes = np.concatenate(classes)
    del pixels, sums

    pending = _Batch(batch_size)
    open_regions: dict[int, _OpenRegion] = {}
    for ordinal, (index, data) in enumerate(load()):
        key = (int(index[0]), int(index[1]))
        if ordinal >= len(order) or key != order[ordinal]:
            raise RuntimeError(f"polygon pieces came in another order the second time (block {key})")
        piece = BlockPolygons.from_bytes(data)
        ids = offsets[key] + np.arange(len(piece.classes))
        alone = members[roots[ids]] == 1
        if alone.any():
            k = ids[alone]
            pending.add(
                shapely.from_wkb(piece.geometries[alone]),
                classes[k],
                merged_pixels[k],
                merged_sums[k],
            )
        continuing = shapely.from_wkb(piece.geometries[~alone])
        for region, geometry in zip(roots[ids[~alone]].tolist(), continuing):
            open_regions.setdefault(region, _OpenRegion()).add(geometry)
        del continuing
        for region in [r for r in open_regions if ends[r] == ordinal]:
            geometry = open_regions.pop(region).polygon()
            pending.add(
                np.array([geometry]), classes[[region]], merged_pixels[[region]], merged_sums[[region]]
            )
        yield from pending.full()
    yield from pending.rest()


class _OpenRegion:
    """The pieces of a joined region read so far, compactly: their outlines as polygons, their
    holes as plain coordinates (a region as large as the scene may have millions of speckle
    holes; as geometry objects they would take several times the memory)."""

    def __init__(self) -> None:
        self.outlines: list[shapely.Polygon] = []
        self.hole_points: list[np.ndarray] = []
        self.hole_sizes: list[np.ndarray] = []

    def add(self, piece: shapely.Polygon) -> None:
        self.outlines.append(shapely.Polygon(piece.exterior))
        holes = shapely.get_rings(piece)[1:]
        if len(holes):
            self.hole_points.append(shapely.get_coordinates(holes))
            self.hole_sizes.append(shapely.get_num_coordinates(holes))

    def polygon(self) -> shapely.Polygon:
        """The region: its pieces' outlines unioned, every piece's holes kept (see
        :func:`pipeline.exporters.polygons.union_of_pieces` for why that is the union)."""
        outline = shapely.union_all(self.outlines)
        if not isinstance(outline, shapely.Polygon):
            raise RuntimeError("the pieces of a joined region do not form one polygon")
        holes: list = list(outline.interiors)
        if self.hole_points:
            sizes = np.concatenate(self.hole_sizes)
            rings = shapely.linearrings(
                np.concatenate(self.hole_points), indices=np.repeat(np.arange(len(sizes)), sizes)
            )
            holes += list(rings)
        return shapely.Polygon(outline.exterior, holes)


class _Batch:
    """Regions gathered until a batch is full."""

    def __init__(self, size: int):
        self.size, self.parts = size, []
        self.count = 0

    def add(self, geometries: np.ndarray, classes: np.ndarray, pixels: np.ndarray, sums: np.ndarray) -> None:
        self.parts.append((geometries, classes, pixels, sums))
        self.count += len(classes)

    def full(self) -> Iterator[Regions]:
        if self.count >= self.size:
            yield from self.rest()

    def rest(self) -> Iterator[Regions]:
        if self.count:
            geometries, classes, pixels, sums = (np.concatenate(column) for column in zip(*self.parts))
            self.parts, self.count = [], 0
            yield Regions(geometries, classes.astype(np.int64), pixels.astype(np.int64), sums)


def write_region_stream(batches: Iterable[Regions], transform: Sequence[float], target: VectorTarget) -> Path:
    """The regions as features, batch by batch, in the vector format of ``target.path`` (renamed into
    place with its style when complete). Every region must be a Polygon, as merged regions are."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("class_id", pa.int32()),
            ("class_name", pa.string()),
            ("area", pa.float64()),
            ("mean_probability", pa.float64()),
            ("pixels", pa.int64()),
            ("geometry", pa.binary()),
        ]
    )

    failures: list[BaseException] = []

    def records() -> Iterator[pa.RecordBatch]:
        try:
            for regions in batches:
                if not (shapely.get_type_id(regions.geometries) == shapely.GeometryType.POLYGON).all():
                    raise RuntimeError("a merged region is not one polygon")
                geometries = to_crs(regions.geometries, transform)
                fields = feature_fields(regions, geometries, target.class_names)
                columns = [pa.array(v, type=schema.field(k).type) for k, v in fields.items()]
                wkb = pa.array(shapely.to_wkb(geometries), pa.binary())
                yield pa.record_batch([*columns, wkb], schema=schema)
        except BaseException as error:  # GDAL reports any failure of the stream as its own
            failures.append(error)
            raise

    with staged_vector(target) as (tmp, driver):
        if driver == "Parquet":
            import pyarrow.parquet as pq

            meta = geoparquet_metadata(["Polygon"], target.crs_wkt, None)
            with pq.ParquetWriter(tmp, schema.with_metadata({b"geo": meta})) as writer:
                for record in records():
                    writer.write_batch(record)
        else:
            from pyogrio.raw import write_arrow

            try:
                write_arrow(
                    pa.RecordBatchReader.from_batches(schema, records()),
                    str(tmp),
                    layer=LAYER,
                    driver=driver,
                    geometry_name="geometry",
                    geometry_type="Polygon",
                    crs=target.crs_wkt,
                )
            except RuntimeError:
                if failures:
                    raise failures[0] from None
                raise
    return target.path
