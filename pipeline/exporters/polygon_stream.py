"""Polygons merged and written in one pass over the blocks, holding only the regions still open.

The in-memory merge (:func:`pipeline.exporters.polygons.merge_pieces`) holds every region
of the scene, which cleaning needs: a minimum area, hole filling and simplification look
at neighbours anywhere. Without cleaning, a region is final as soon as the last block
holding a piece of it has been read. So the export reads the pieces twice: first their
sides (which regions touching a block side join across it, and the block where each
joined region ends), then the pieces again in the same order, writing each region as soon
as it is final. A region inside one block is written from its piece; a joined region's
pieces wait as plain coordinates in a temporary file until its last block, and it is
written as WKB built from them, without a geometry object per hole. So memory holds the
sides, a few numbers per region on a block side, one block's piece and the largest
feature, whatever the scene's size. Features come in block order (a joined region at the
block where it ends); the polygons are those of the in-memory merge.

>>> import numpy as np, shapely
>>> from pipeline.exporters.polygon_pieces import BlockPolygons
>>> labels = np.array([[0, 0, 1, 1], [2, 0, 1, 1]], np.uint8)
>>> blocks = {(0, j): BlockPolygons.from_labels(labels[:, 2 * j : 2 * j + 2], None, (0, 2 * j), 255)
...           for j in range(2)}
>>> load = lambda: ((index, piece.to_bytes()) for index, piece in sorted(blocks.items()))
>>> [(f.classes.tolist(), f.pixels.tolist()) for f in stream_features(load, (1, 0, 0, 0, 1, 0))]
[([0, 2, 1], [3, 1, 4])]
>>> [shapely.from_wkb(f.wkb).tolist() for f in stream_features(load, (10, 0, 500, 0, -10, 900))][0][2].bounds
(520.0, 880.0, 540.0, 900.0)
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from pipeline.exporters.outline_union import split_on_box, union_of_outlines
from pipeline.exporters.polygon_pieces import BlockPolygons
from pipeline.exporters.polygons import (
    LAYER,
    VectorTarget,
    affine_points,
    feature_fields,
    geoparquet_metadata,
    joined_roots,
    pixel_area,
    staged_vector,
    to_crs,
)

PieceSource = Callable[[], Iterable[tuple[tuple[int, ...], bytes]]]
"""Yields every block's piece (index, bytes) in one fixed order each time it is called."""

BATCH_BYTES = 64 * 2**20
"""A batch of features is written once its WKB reaches this size (or its count, the batch size)."""


@dataclass
class Features:
    """Regions ready to write: polygons as WKB in the CRS, with their class, pixel count, sum of
    top-class probability and area (CRS units²: the pixels' area, which is the polygon's)."""

    wkb: np.ndarray
    classes: np.ndarray
    pixels: np.ndarray
    probability_sums: np.ndarray
    area: np.ndarray


def stream_features(
    load: PieceSource,
    transform: Sequence[float],
    batch_size: int = 20_000,
    spill_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Features]:
    """The scene's regions as features in batches, each region once it is final.

    ``transform``: the raster's affine transform (GDAL order), pixel → CRS coordinates.
    The pieces of regions still open wait in a temporary file in ``spill_dir`` (default:
    the system's temporary folder).
    """
    joins = _Joins.read(load)
    if joins is None:
        return
    area_of_pixel = pixel_area(transform)
    with _Spill(spill_dir) as spill:
        pending = _Batch(batch_size, area_of_pixel)
        open_regions: dict[int, _OpenRegion] = {}
        for ordinal, (index, data) in enumerate(load()):
            key = (int(index[0]), int(index[1]))
            if ordinal >= len(joins.order) or key != joins.order[ordinal]:
                raise RuntimeError(f"polygon pieces came in another order the second time (block {key})")
            piece = BlockPolygons.from_bytes(data)
            region_of = joins.regions_of(ordinal, piece)
            alone = region_of < 0
            if alone.any():
                wkb = shapely.to_wkb(to_crs(shapely.from_wkb(piece.geometries[alone]), transform))
                pending.add(wkb, piece.classes[alone], piece.pixels[alone], piece.probability_sums[alone])
            (row, col), (rows, cols) = piece.origin, piece.shape
            box = (col, row, col + cols, row + rows)
            for region, wkb in zip(region_of[~alone].tolist(), piece.geometries[~alone]):
                open_regions.setdefault(region, _OpenRegion(spill)).add(shapely.from_wkb(wkb), box)
            del piece
            for region in [r for r in open_regions if joins.ends[r] == ordinal]:
                wkb = open_regions.pop(region).wkb(transform)
                if len(wkb) >= BATCH_BYTES:
                    yield from pending.rest()
                pending.add(
                    np.array([wkb], dtype=object),
                    joins.classes[[region]],
                    joins.pixels[[region]],
                    joins.sums[[region]],
                )
                yield from pending.full()
            yield from pending.full()
        yield from pending.rest()


@dataclass
class _Joins:
    """Which regions touching a block side join across it, read from the pieces' sides alone.

    Only regions on a block side can continue next door, so only they are numbered (``first``:
    each block's first number, in load order); a block's other regions are final as read.
    """

    order: list[tuple[int, int]]
    first: np.ndarray
    roots: np.ndarray
    """The joined region (its lowest number) of each numbered region."""
    members: np.ndarray
    ends: np.ndarray
    """Per joined region: the load ordinal of the last block holding a piece of it."""
    classes: np.ndarray
    pixels: np.ndarray
    sums: np.ndarray

    @classmethod
    def read(cls, load: PieceSource) -> _Joins | None:
        """The joins of the pieces ``load`` yields (None when no block has a region)."""
        sides: dict[tuple[int, int], BlockPolygons] = {}
        offsets: dict[tuple[int, int], int] = {}
        order: list[tuple[int, int]] = []
        classes, pixels, sums, total, any_region = [], [], [], 0, False
        for index, data in load():
            piece = BlockPolygons.from_bytes(data, geometries=False)
            key = (int(index[0]), int(index[1]))
            order.append(key)
            offsets[key] = total
            on_sides = piece.on_sides()
            number = np.zeros(len(piece.classes) + 1, dtype=np.int32)
            number[1:][on_sides] = np.arange(1, int(on_sides.sum()) + 1)
            piece.sides = {name: number[ids] for name, ids in piece.sides.items()}
            piece.classes = piece.classes[on_sides]
            classes.append(piece.classes)
            pixels.append(piece.pixels[on_sides])
            sums.append(piece.probability_sums[on_sides])
            piece.pixels = piece.probability_sums = np.zeros(0)
            sides[key] = piece
            total += len(piece.classes)
            any_region |= number.size > 1
        if not any_region:
            return None
        roots = joined_roots(sides, offsets)
        block_of = np.repeat(np.arange(len(order)), [len(sides[key].classes) for key in order])
        ends = np.zeros(total, dtype=np.int64)
        np.maximum.at(ends, roots, block_of)
        return cls(
            order,
            np.array([offsets[key] for key in order], dtype=np.int64),
            roots,
            np.bincount(roots, minlength=total),
            ends,
            np.concatenate(classes),
            np.bincount(roots, weights=np.concatenate(pixels), minlength=total).astype(np.int64),
            np.bincount(roots, weights=np.concatenate(sums), minlength=total),
        )

    def regions_of(self, ordinal: int, piece: BlockPolygons) -> np.ndarray:
        """Per region of the block at ``ordinal``: the joined region it is a piece of, or -1 when
        it is a region of its own."""
        on_sides = piece.on_sides()
        region_of = np.full(len(piece.classes), -1, dtype=np.int64)
        roots = self.roots[self.first[ordinal] + np.arange(int(on_sides.sum()))]
        region_of[np.flatnonzero(on_sides)] = np.where(self.members[roots] > 1, roots, -1)
        return region_of


Span = tuple[int, int, int]
"""Where :meth:`_Spill.write` put rings: byte offset, number of points, number of rings."""


class _Spill:
    """An append-only temporary file of rings (coordinates and ring sizes), read back by span."""

    def __init__(self, folder: str | os.PathLike[str] | None):
        self.folder = folder

    def __enter__(self) -> _Spill:
        self.file = tempfile.TemporaryFile(prefix="gigaseg-polygons-", dir=self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, points: np.ndarray, sizes: np.ndarray) -> Span:
        """Append rings: their coordinates ``(n, 2)`` and sizes."""
        offset = self.file.seek(0, os.SEEK_END)
        self.file.write(np.ascontiguousarray(points, dtype=np.float64).tobytes())
        self.file.write(np.ascontiguousarray(sizes, dtype=np.int64).tobytes())
        return offset, len(points), len(sizes)

    def read(self, span: Span) -> tuple[np.ndarray, np.ndarray]:
        """The coordinates ``(n, 2)`` and ring sizes written at ``span``."""
        offset, count, rings = span
        self.file.seek(offset)
        points = np.empty((count, 2), dtype=np.float64)
        sizes = np.empty(rings, dtype=np.int64)
        for array in (points, sizes):
            if array.nbytes and self.file.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
                raise OSError("the temporary file of polygon pieces was cut short")
        return points, sizes


class _OpenRegion:
    """A joined region's pieces read so far, in the spill file: each piece's outline (its
    exterior as a polygon) and its holes, as plain coordinates (a region as large as the
    scene may have millions of speckle holes)."""

    def __init__(self, spill: _Spill) -> None:
        self.spill = spill
        self.outlines: list[Span] = []
        self.holes: list[Span] = []

    def add(self, piece: shapely.Polygon, box: Sequence[int]) -> None:
        """A piece from the block with bounds ``box`` (x0, y0, x1, y1, pixel coordinates)."""
        outline = split_on_box(shapely.get_coordinates(piece.exterior), box)
        self.outlines.append(self.spill.write(outline, np.array([len(outline)])))
        holes = shapely.get_rings(piece)[1:]
        if len(holes):
            self.holes.append(
                self.spill.write(shapely.get_coordinates(holes), shapely.get_num_coordinates(holes))
            )

    def wkb(self, transform: Sequence[float]) -> bytes:
        """The region as a WKB polygon in the CRS: its pieces' outlines unioned, every piece's
        holes kept (see :func:`pipeline.exporters.polygons.union_of_pieces` for why that is the
        union), built from coordinates, one piece's holes at a time."""
        outlines = [self.spill.read(span) for span in self.outlines]
        points, sizes = (np.concatenate(column) for column in zip(*outlines))
        del outlines
        try:
            outline = union_of_outlines(points, sizes)
        except ValueError as error:
            raise RuntimeError(f"the pieces of a joined region do not form one polygon: {error}") from None
        del points, sizes
        count = len(outline[1]) + sum(rings for _, _, rings in self.holes)
        total = 9 + 4 * count + 16 * (len(outline[0]) + sum(n for _, n, _ in self.holes))
        wkb = bytearray(total)
        wkb[:9] = struct.pack("<BII", 1, 3, count)
        at = 9
        for points, sizes in itertools.chain([outline], (self.spill.read(span) for span in self.holes)):
            block = ring_block_wkb(affine_points(points, transform), sizes)
            wkb[at : at + len(block)] = block
            at += len(block)
        return bytes(wkb)


def ring_block_wkb(points: np.ndarray, sizes: np.ndarray) -> bytes:
    """Rings as they follow each other in a little-endian WKB polygon: each ring's point count
    (uint32), then its points (x, y as float64); ``points`` ``(n, 2)``, ``sizes`` per ring.

    >>> import shapely
    >>> square = shapely.box(0, 0, 1, 1)
    >>> rings = shapely.get_rings(square)
    >>> body = ring_block_wkb(shapely.get_coordinates(rings), shapely.get_num_coordinates(rings))
    >>> shapely.to_wkb(square) == struct.pack("<BII", 1, 3, 1) + body
    True
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    coordinates = np.ascontiguousarray(points, dtype="<f8").view(np.uint8).ravel()
    out = np.empty(coordinates.size + 4 * len(sizes), dtype=np.uint8)
    starts = 4 * np.arange(len(sizes)) + 16 * (np.cumsum(sizes) - sizes)
    is_count = np.zeros(out.size, dtype=bool)
    is_count[(starts[:, None] + np.arange(4)).ravel()] = True
    out[is_count] = sizes.astype("<u4").view(np.uint8)
    out[~is_count] = coordinates
    return out.tobytes()


class _Batch:
    """Features gathered until a batch is full (by count or by WKB bytes)."""

    def __init__(self, size: int, area_of_pixel: float):
        self.size, self.area_of_pixel = size, area_of_pixel
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.count = self.nbytes = 0

    def add(self, wkb: np.ndarray, classes: np.ndarray, pixels: np.ndarray, sums: np.ndarray) -> None:
        self.parts.append((wkb, classes, pixels, sums))
        self.count += len(classes)
        self.nbytes += sum(len(w) for w in wkb)

    def full(self) -> Iterator[Features]:
        if self.count >= self.size or self.nbytes >= BATCH_BYTES:
            yield from self.rest()

    def rest(self) -> Iterator[Features]:
        if self.count:
            wkb, classes, pixels, sums = (np.concatenate(column) for column in zip(*self.parts))
            self.parts, self.count, self.nbytes = [], 0, 0
            pixels = pixels.astype(np.int64)
            yield Features(wkb, classes.astype(np.int64), pixels, sums, pixels * self.area_of_pixel)


def write_region_stream(batches: Iterable[Features], target: VectorTarget) -> Path:
    """The features, batch by batch, in the vector format of ``target.path`` (renamed into place
    with its style when complete). Every geometry must be a Polygon, as merged regions are."""
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
            for features in batches:
                fields = feature_fields(features, features.area, target.class_names)
                columns = [pa.array(v, type=schema.field(k).type) for k, v in fields.items()]
                yield pa.record_batch([*columns, _binary_array(features.wkb)], schema=schema)
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


def _binary_array(wkb: np.ndarray):
    """An Arrow binary array over the WKB, made from one buffer (a single feature's WKB is not
    copied; Arrow's builder would grow its buffer by doubling)."""
    import pyarrow as pa

    sizes = np.fromiter((len(w) for w in wkb), dtype=np.int64, count=len(wkb))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] >= 2**31:
        raise RuntimeError("a batch of polygons is over 2 GiB of WKB")
    data = b"".join(wkb)
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.binary(), len(wkb), buffers)
