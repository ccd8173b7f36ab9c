"""Polygons: the blocks' pieces merged across block edges, cleaned, and written as GIS vectors.

Each block polygonised its own regions where it was computed
(:mod:`pipeline.exporters.polygon_pieces`). Regions that touch a block side are
joined with the region across it when both pixels there hold the same class
(union-find over the sides), their pieces unioned (outlines overlaid, holes kept)
and their sums added; so no polygon is cut by the block grid, and the polygons
equal those of one block over the whole scene. Then, in this order and all optional: regions under a minimum
area are merged into the neighbour they share the longest edge with (or dropped);
holes under an area are filled where polygons fill them (never where nodata
does); the polygons are simplified as a coverage (neighbours keep shared edges).
Geometry work is done in pixel coordinates (exact) and moved to the CRS last.

Written with one feature per region: ``class_id``, ``class_name``, ``area`` (CRS
units², m² for projected CRSs), ``mean_probability`` (of the class over the
region's own pixels), ``pixels``; GeoPackage (``.gpkg``, with its style in
``layer_styles``), FlatGeobuf (``.fgb``) or GeoParquet (``.parquet``), the latter
two with a ``STEM.qml`` style beside them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely

from pipeline.errors import InputError
from pipeline.exporters.polygon_pieces import BlockPolygons
from pipeline.exporters.qgis_style import polygons_qml
from pipeline.stores.transfer import write_text_atomically

if TYPE_CHECKING:
    from pipeline.exporters.polygon_stream import Features

VECTOR_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".parquet": "Parquet"}
LAYER = "classes"


def vector_driver(path: os.PathLike[str] | str) -> str:
    """The writer for a vector output name (``.gpkg``, ``.fgb`` or ``.parquet``)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in VECTOR_DRIVERS:
        raise InputError(f"{path}: unknown vector format (use .gpkg, .fgb or .parquet)")
    return VECTOR_DRIVERS[suffix]


@dataclass(frozen=True)
class PolygonOptions:
    """How the polygons are cleaned; areas and tolerance in CRS units (0: off)."""

    min_area: float = 0.0
    small: str = "merge"
    """What happens to a region under ``min_area``: ``merge`` into a neighbour, or ``drop``."""
    fill_holes: float = 0.0
    simplify: float = 0.0

    @property
    def cleans(self) -> bool:
        """Whether any cleaning is asked for (each needs every region at hand)."""
        return self.min_area > 0 or self.fill_holes > 0 or self.simplify > 0


@dataclass
class Regions:
    """Polygons (pixel coordinates) with their class, pixel count and sum of top probability."""

    geometries: np.ndarray
    classes: np.ndarray
    pixels: np.ndarray
    probability_sums: np.ndarray

    def take(self, keep: np.ndarray) -> Regions:
        """The regions where ``keep`` holds."""
        return Regions(
            self.geometries[keep], self.classes[keep], self.pixels[keep], self.probability_sums[keep]
        )


class _UnionFind:
    def __init__(self, size: int):
        self.parent = np.arange(size)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """Every element's root at once (pointer jumping until nothing moves)."""
        parent = self.parent
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                return parent
            parent = jumped


def joined_roots(
    pieces: dict[tuple[int, int], BlockPolygons], offsets: dict[tuple[int, int], int]
) -> np.ndarray:
    """For each region of the scene (numbered by ``offsets[block] + k``), the lowest-numbered
    region it is joined with across block sides (same class on both pixels); itself if none."""
    total = sum(len(p.classes) for p in pieces.values())
    joins = _UnionFind(total)
    for (i, j), piece in pieces.items():
        for other_index, mine, theirs in (((i, j + 1), "right", "left"), ((i + 1, j), "bottom", "top")):
            other = pieces.get(other_index)
            if other is None:
                continue
            a, b = piece.sides[mine].astype(np.int64), other.sides[theirs].astype(np.int64)
            both = (a > 0) & (b > 0)
            a, b = a[both], b[both]
            same = piece.classes[a - 1] == other.classes[b - 1]
            for x, y in set(zip(a[same].tolist(), b[same].tolist())):
                joins.union(offsets[(i, j)] + x - 1, offsets[other_index] + y - 1)
    return joins.roots()


def union_of_pieces(pieces: np.ndarray) -> shapely.Geometry:
    """One region's pieces from several blocks as one polygon: the union of their outlines,
    with every piece's own holes kept as they are.

    A piece's hole lies inside the piece's block (the piece surrounds it), so no piece
    of another block can fill it: only the outlines need the overlay, which is much
    cheaper than unioning pieces full of speckle holes. The outlines' union may add
    holes of its own (a region closing a ring across blocks). Should the outlines not
    form one polygon, the pieces are unioned whole.
    """
    outline = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(pieces)))
    if not isinstance(outline, shapely.Polygon):
        return shapely.union_all(pieces)
    holes = [ring for piece in pieces for ring in piece.interiors]
    return shapely.Polygon(outline.exterior, [*outline.interiors, *holes])


def merge_pieces(pieces: dict[tuple[int, int], BlockPolygons]) -> Regions:
    """The scene's regions from the blocks' pieces: those crossing block sides joined into one."""
    offsets, total = {}, 0
    for index in sorted(pieces):
        offsets[index] = total
        total += len(pieces[index].classes)
    ordered = [pieces[i] for i in sorted(pieces)]
    classes = np.concatenate([p.classes for p in ordered]) if ordered else np.zeros(0, np.int64)
    pixels = np.concatenate([p.pixels for p in ordered]) if ordered else np.zeros(0, np.int64)
    sums = np.concatenate([p.probability_sums for p in ordered]) if ordered else np.zeros(0)
    wkb = np.concatenate([p.geometries for p in ordered]) if ordered else np.zeros(0, object)
    roots = joined_roots(pieces, offsets)
    keep = roots == np.arange(total)
    geometries = shapely.from_wkb(wkb) if total else np.zeros(0, object)
    joined = np.flatnonzero(~keep)
    if joined.size:
        groups: dict[int, list[int]] = {}
        for k in joined.tolist():
            groups.setdefault(int(roots[k]), [int(roots[k])]).append(k)
        for root, members in groups.items():
            geometries[root] = union_of_pieces(geometries[members])
    merged_pixels = np.bincount(roots, weights=pixels, minlength=total).astype(np.int64)
    merged_sums = np.bincount(roots, weights=sums, minlength=total)
    return Regions(geometries[keep], classes[keep], merged_pixels[keep], merged_sums[keep])


def _neighbour_edges(regions: Regions, small: np.ndarray, large: np.ndarray) -> dict[int, int]:
    """For each small region, the large one it shares the longest edge with (none: left out)."""
    tree = shapely.STRtree(regions.geometries[large])
    target: dict[int, int] = {}
    for k in np.flatnonzero(small).tolist():
        geom = regions.geometries[k]
        near = tree.query(geom, predicate="touches")
        if near.size == 0:
            continue
        candidates = regions.geometries[large][near]
        shared = shapely.length(shapely.intersection(shapely.boundary(candidates), shapely.boundary(geom)))
        if shared.max() > 0:
            target[k] = int(np.flatnonzero(large)[near[int(np.argmax(shared))]])
    return target


def remove_small(regions: Regions, min_pixels: float, merge: bool) -> Regions:
    """Regions under ``min_pixels`` merged into their longest-edge large neighbour, or dropped."""
    areas = shapely.area(regions.geometries)
    small = areas < min_pixels
    if not small.any():
        return regions
    if merge:
        geometries = regions.geometries.copy()
        absorbed: dict[int, list[int]] = {}
        for k, into in _neighbour_edges(regions, small, ~small).items():
            absorbed.setdefault(into, []).append(k)
        for into, ks in absorbed.items():
            geometries[into] = shapely.union_all(geometries[[into, *ks]])
        regions = Regions(geometries, regions.classes, regions.pixels, regions.probability_sums)
    return regions.take(~small)


def fill_holes(regions: Regions, max_pixels: float) -> Regions:
    """Holes under ``max_pixels`` filled, and the regions inside them dropped, where regions cover
    the hole entirely (a hole that holds nodata stays: nodata never becomes a polygon)."""
    tree = shapely.STRtree(regions.geometries)
    areas = shapely.area(regions.geometries)
    geometries = regions.geometries.copy()
    swallowed = np.zeros(len(geometries), dtype=bool)
    for k in np.flatnonzero(shapely.get_num_interior_rings(regions.geometries) > 0).tolist():
        polygon = geometries[k]
        holes = []
        for ring in polygon.interiors:
            hole = shapely.Polygon(ring)
            if hole.area >= max_pixels:
                holes.append(ring)
                continue
            inside = tree.query(hole, predicate="contains")
            if abs(areas[inside].sum() - hole.area) > 1e-6 * max(1.0, hole.area):
                holes.append(ring)  # nodata in the hole
                continue
            swallowed[inside] = True
        geometries[k] = shapely.Polygon(polygon.exterior, holes)
    return Regions(geometries, regions.classes, regions.pixels, regions.probability_sums).take(~swallowed)


def clean(regions: Regions, options: PolygonOptions, pixel_area: float, pixel_size: float) -> Regions:
    """Minimum area, hole filling and coverage simplification, in that order (pixel coordinates)."""
    if options.min_area > 0:
        regions = remove_small(regions, options.min_area / pixel_area, options.small == "merge")
    if options.fill_holes > 0 and len(regions.geometries):
        regions = fill_holes(regions, options.fill_holes / pixel_area)
    if options.simplify > 0 and len(regions.geometries):
        simplified = shapely.coverage_simplify(regions.geometries, options.simplify / pixel_size)
        regions = Regions(simplified, regions.classes, regions.pixels, regions.probability_sums)
    return regions


def affine_points(points: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Points ``(n, 2)`` (x = column, y = row) → the raster's CRS through its affine transform
    (GDAL order: ``x' = a·x + b·y + c``, ``y' = d·x + e·y + f``)."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    x, y = points[:, 0], points[:, 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)


def to_crs(geometries: np.ndarray, transform: Sequence[float]) -> np.ndarray:
    """Pixel coordinates → the raster's CRS through its affine transform."""
    return shapely.transform(geometries, lambda xy: affine_points(xy, transform))


def pixel_area(transform: Sequence[float]) -> float:
    """The area of one pixel in CRS units² (the transform's determinant)."""
    a, b, _, d, e, _ = transform[:6]
    return abs(a * e - b * d)


def read_pieces(load: Iterable[tuple[tuple[int, int], bytes]]) -> dict[tuple[int, int], BlockPolygons]:
    """The blocks' pieces by block index."""
    return {index: BlockPolygons.from_bytes(data) for index, data in load}


@dataclass(frozen=True)
class VectorTarget:
    """Where and how the polygons are written: path, CRS (WKT or None), class names and colours."""

    path: Path
    crs_wkt: str | None
    class_names: Sequence[str]
    colors: Sequence[Sequence[int]]


def feature_fields(
    regions: Regions | Features, area: np.ndarray, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The features' attribute columns, ``area`` in CRS units²."""
    names = np.array(list(class_names), dtype=object)
    return {
        "class_id": regions.classes.astype(np.int32),
        "class_name": names[regions.classes] if len(regions.classes) else np.zeros(0, object),
        "area": np.asarray(area, dtype=np.float64),
        "mean_probability": regions.probability_sums / np.maximum(regions.pixels, 1),
        "pixels": regions.pixels.astype(np.int64),
    }


@contextmanager
def staged_vector(target: VectorTarget) -> Iterator[tuple[Path, str]]:
    """A temporary path and the driver to write the layer with; when the block ends without an
    error the layer gets its categorised style and is renamed into place, else it is removed."""
    driver = vector_driver(target.path)
    tmp = target.path.with_name(f".{target.path.name}.{os.getpid()}.tmp{target.path.suffix}")
    try:
        yield tmp, driver
        qml = polygons_qml(target.class_names, target.colors)
        if driver == "GPKG":
            _add_layer_style(tmp, qml)
        else:
            write_text_atomically(target.path.with_suffix(".qml"), qml)
        os.replace(tmp, target.path)
    finally:
        tmp.unlink(missing_ok=True)


def write_regions(regions: Regions, transform: Sequence[float], target: VectorTarget) -> Path:
    """One feature per region, ordered by position, in the vector format of ``target.path``,
    under a temporary name renamed into place, with its categorised style."""
    geometries = to_crs(regions.geometries, transform)
    order = np.lexsort((shapely.bounds(regions.geometries)[:, 0], shapely.bounds(regions.geometries)[:, 1]))
    geometries, r = geometries[order], regions.take(order)
    fields = feature_fields(r, shapely.area(geometries), target.class_names)
    with staged_vector(target) as (tmp, driver):
        if driver == "Parquet":
            _write_geoparquet(tmp, geometries, fields, target.crs_wkt)
        else:
            _write_ogr(tmp, driver, geometries, fields, target.crs_wkt)
    return target.path


def _geometry_type(geometries: np.ndarray) -> str:
    kinds = set(shapely.get_type_id(geometries).tolist())
    return "MultiPolygon" if shapely.GeometryType.MULTIPOLYGON in kinds else "Polygon"


def _write_ogr(path: Path, driver: str, geometries: np.ndarray, fields: dict, crs_wkt: str | None) -> None:
    from pyogrio.raw import write

    geometry_type = _geometry_type(geometries)
    write(
        str(path),
        shapely.to_wkb(geometries),
        list(fields.values()),
        list(fields),
        layer=LAYER,
        driver=driver,
        geometry_type=geometry_type,
        crs=crs_wkt,
        promote_to_multi=geometry_type == "MultiPolygon",
    )


def geoparquet_metadata(geometry_types: list[str], crs_wkt: str | None, bbox: list[float] | None) -> bytes:
    """GeoParquet 1.1's ``geo`` metadata for a WKB ``geometry`` column (CRS as PROJJSON)."""
    from rasterio.crs import CRS

    column: dict = {"encoding": "WKB", "geometry_types": geometry_types}
    if crs_wkt:
        column["crs"] = CRS.from_wkt(crs_wkt).to_dict(projjson=True)
    if bbox is not None:
        column["bbox"] = bbox
    return json.dumps(
        {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    ).encode()


def _write_geoparquet(path: Path, geometries: np.ndarray, fields: dict, crs_wkt: str | None) -> None:
    """GeoParquet 1.1 (WKB geometry, PROJJSON CRS) with pyarrow (GDAL here has no Parquet driver)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({**fields, "geometry": pa.array(shapely.to_wkb(geometries), type=pa.binary())})
    bbox = list(shapely.total_bounds(geometries)) if len(geometries) else None
    meta = geoparquet_metadata([_geometry_type(geometries)], crs_wkt, bbox)
    pq.write_table(table.replace_schema_metadata({b"geo": meta}), path)


def _add_layer_style(gpkg: Path, qml: str) -> None:
    """The style as the default of the layer in the GeoPackage's ``layer_styles`` table (QGIS's own)."""
    with sqlite3.connect(gpkg) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256), "
            "f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT, "
            "useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), update_time DATETIME "
            "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
        )
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles')"
        )
        geometry_column = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (LAYER,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
            "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, 'gigaseg classes', '', NULL)",
            (LAYER, geometry_column, LAYER, qml),
        )
