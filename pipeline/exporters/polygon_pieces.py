"""One block's polygons, made where the block is computed: what the polygon export merges later.

Each connected region of a class (4-connectivity; nodata is never a region) in
the block becomes one polygon, in *scene pixel coordinates* (integers, so pieces
of one region from two blocks meet exactly). With it go the region's class,
pixel count and sum of top-class probability, and the region ids along the
block's four sides, from which :mod:`pipeline.exporters.polygons` finds the
regions that continue in the neighbouring block. The piece is serialised to
bytes (``.npz``) for the output store.

>>> import numpy as np
>>> piece = BlockPolygons.from_labels(np.array([[0, 0, 1], [2, 0, 1]], np.uint8), None, (0, 0), 255)
>>> piece.classes.tolist(), piece.pixels.tolist()
([0, 1, 2], [3, 2, 1])
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from skimage.measure import label as connected_regions


@dataclass
class BlockPolygons:
    """A block's regions: polygons (WKB, scene pixel coordinates) and per-region sums, plus its sides."""

    origin: tuple[int, int]
    shape: tuple[int, int]
    classes: np.ndarray
    """Class id per region (region ``k`` is row ``k``; ids in ``sides`` are ``k + 1``)."""
    pixels: np.ndarray
    probability_sums: np.ndarray
    geometries: np.ndarray
    """Polygons as WKB (object array)."""
    sides: dict[str, np.ndarray]
    """Region id (0: nodata) along the ``top``, ``bottom``, ``left`` and ``right`` sides."""

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, top: np.ndarray | None, origin: Sequence[int], nodata: int
    ) -> BlockPolygons:
        """The regions of a block's labels; ``top``: per-pixel top-class probability (None: 1)."""
        ids = connected_regions(labels, background=nodata, connectivity=1).astype(np.int32)
        count = int(ids.max())
        first = np.zeros(count + 1, dtype=np.int64)
        flat = ids.ravel()
        first[flat[::-1]] = np.arange(flat.size - 1, -1, -1)  # a pixel of each region
        classes = labels.ravel()[first[1:]].astype(np.int64)
        pixels = np.bincount(flat, minlength=count + 1)[1:]
        weights = np.ones(flat.size) if top is None else np.nan_to_num(top.ravel().astype(np.float64))
        sums = np.bincount(flat, weights=weights, minlength=count + 1)[1:]
        geometries = np.empty(count, dtype=object)
        geometries[:] = list(_region_polygons(ids, count, origin))
        sides = {"top": ids[0], "bottom": ids[-1], "left": ids[:, 0], "right": ids[:, -1]}
        return cls((int(origin[0]), int(origin[1])), ids.shape, classes, pixels, sums, geometries, sides)

    def to_bytes(self) -> bytes:
        """The piece as one ``.npz`` blob."""
        buffer = io.BytesIO()
        wkb = list(self.geometries)
        np.savez(
            buffer,
            origin=np.array(self.origin),
            shape=np.array(self.shape),
            classes=self.classes,
            pixels=self.pixels,
            probability_sums=self.probability_sums,
            wkb=np.frombuffer(b"".join(wkb), dtype=np.uint8),
            wkb_sizes=np.array([len(w) for w in wkb], dtype=np.int64),
            **{f"side_{k}": v for k, v in self.sides.items()},
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, geometries: bool = True) -> BlockPolygons:
        """Read back what :meth:`to_bytes` wrote (without the polygons, which are most of it,
        unless ``geometries``)."""
        with np.load(io.BytesIO(data)) as z:
            wkb = np.empty(len(z["classes"]) if geometries else 0, dtype=object)
            if geometries:
                blob = z["wkb"].tobytes()
                ends = np.cumsum(z["wkb_sizes"])
                wkb[:] = [blob[e - s : e] for e, s in zip(ends, z["wkb_sizes"])]
            return cls(
                tuple(int(v) for v in z["origin"]),
                tuple(int(v) for v in z["shape"]),
                z["classes"],
                z["pixels"],
                z["probability_sums"],
                wkb,
                {k: z[f"side_{k}"] for k in ("top", "bottom", "left", "right")},
            )

    def on_sides(self) -> np.ndarray:
        """Boolean per region: does it touch a side of the block (so it may continue next door)?"""
        touching = np.zeros(len(self.classes) + 1, dtype=bool)
        for side in self.sides.values():
            touching[side] = True
        return touching[1:]


def _region_polygons(ids: np.ndarray, count: int, origin: Sequence[int]) -> np.ndarray:
    """WKB of region ``k + 1``'s polygon at row ``k``, in scene pixel coordinates.

    GDAL traces the outlines; the rings and polygons are then built by shapely in
    one vectorised call each rather than one Python object per region.
    """
    coordinates: list[np.ndarray] = []
    ring_of_point: list[np.ndarray] = []
    polygon_of_ring: list[int] = []
    region = np.empty(count, dtype=np.int64)
    for n, (geom, value) in enumerate(rasterio.features.shapes(ids, mask=ids > 0, connectivity=4)):
        region[n] = int(value) - 1
        for ring in geom["coordinates"]:
            points = np.asarray(ring, dtype=np.float64)
            ring_of_point.append(np.full(len(points), len(polygon_of_ring), dtype=np.int64))
            coordinates.append(points)
            polygon_of_ring.append(n)
    if not coordinates:
        return np.empty(0, dtype=object)
    points = np.concatenate(coordinates) + np.array([origin[1], origin[0]], dtype=np.float64)
    rings = shapely.linearrings(points, indices=np.concatenate(ring_of_point))
    polygons = shapely.polygons(rings, indices=np.asarray(polygon_of_ring, dtype=np.int64))
    ordered = np.empty(count, dtype=object)
    ordered[region[: len(polygons)]] = shapely.to_wkb(polygons)
    return ordered
