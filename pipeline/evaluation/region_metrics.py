"""Per-region statistics of a finished output store: area, fractions, confidence, entropy, scores.

A region is an output block (default) or a polygon of a user's GeoJSON,
reprojected from the GeoJSON's CRS (RFC 7946: WGS 84 unless a ``crs`` member
names another) to the raster's, and rasterised by pixel centre. Everything is
read window by window from the output store (labels, confidence, entropy) and
the optional reference label raster, so memory stays bounded by the window.

Per region: pixels, nodata fraction, per class the pixel count, area in m²
(when the CRS has linear units) and fraction of the valid pixels, mean
confidence and entropy of the valid pixels; with reference labels the
confusion matrix and from it accuracy and per-class IoU, Dice and accuracy
(recall), over pixels valid in both.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from pipeline.errors import InputError
from pipeline.evaluation.metrics import dice_per_class, iou_per_class, nanmean
from pipeline.inputs.band_stack import check_same_grid
from pipeline.inputs.raster import RasterInfo, inspect_raster
from pipeline.stores.location import Where, location, storage_error
from pipeline.stores.object_storage_settings import open_raster
from pipeline.stores.output import OutputStore
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.regions import slices

log = logging.getLogger("gigaseg")

Window = tuple[tuple[int, int], tuple[int, int]]
WINDOW = 1024


@dataclass
class RegionSpec:
    """A region: name, outline in the raster's CRS, pixel bounds, and whether it is a polygon."""

    name: str
    geometry: dict[str, Any]
    bounds: Window
    polygon: bool = False


@dataclass
class RegionStats:
    """Sums over one region (combine by adding; derived values are properties)."""

    name: str
    geometry: dict[str, Any]
    num_classes: int
    pixels: int = 0
    nodata: int = 0
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence_sum: float = 0.0
    entropy_sum: float = 0.0
    confusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def valid(self) -> int:
        """Pixels with a predicted class."""
        return int(self.counts.sum())

    def row(self, class_names: Sequence[str], pixel_area_m2: float | None) -> dict[str, Any]:
        """The table row: one column per statistic (per class where it applies)."""
        valid = self.valid
        row: dict[str, Any] = {
            "region": self.name,
            "pixels": self.pixels,
            "valid_pixels": valid,
            "nodata_fraction": (self.nodata / self.pixels) if self.pixels else float("nan"),
            "mean_confidence": self.confidence_sum / valid if valid else float("nan"),
            "mean_entropy": self.entropy_sum / valid if valid else float("nan"),
        }
        for name, count in zip(class_names, self.counts):
            row[f"pixels_{name}"] = int(count)
            row[f"area_m2_{name}"] = float(count * pixel_area_m2) if pixel_area_m2 else float("nan")
            row[f"fraction_{name}"] = float(count / valid) if valid else float("nan")
        if self.confusion is not None:
            cm = self.confusion
            truth = cm.sum(1)
            ious = [v if truth[i] else float("nan") for i, v in enumerate(iou_per_class(cm))]
            dices = [v if truth[i] else float("nan") for i, v in enumerate(dice_per_class(cm))]
            row["labelled_pixels"] = int(cm.sum())
            row["accuracy"] = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
            row["miou"] = nanmean(ious)
            row["mdice"] = nanmean(dices)
            for i, name in enumerate(class_names):
                row[f"iou_{name}"] = float(ious[i])
                row[f"dice_{name}"] = float(dices[i])
                row[f"accuracy_{name}"] = float(cm[i, i] / truth[i]) if truth[i] else float("nan")
        return row


@dataclass
class RegionTable:
    """All regions' statistics plus the whole scene's."""

    class_names: list[str]
    crs_wkt: str | None
    pixel_area_m2: float | None
    regions: list[RegionStats]
    scene: RegionStats

    def rows(self) -> list[dict[str, Any]]:
        """One dict per region."""
        return [r.row(self.class_names, self.pixel_area_m2) for r in self.regions]

    def scene_row(self) -> dict[str, Any]:
        """The whole scene as one row."""
        return self.scene.row(self.class_names, self.pixel_area_m2)

    def columns(self) -> dict[str, list[Any]]:
        """Column-wise table (what ``mlflow.log_table`` takes)."""
        rows = self.rows()
        return {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """The table as CSV (one row per region), written atomically."""
        path = Path(path)
        rows = self.rows()
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["region"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        return path

    def write_geojson(self, path: str | os.PathLike[str]) -> Path:
        """Regions as GeoJSON features (raster CRS, named in a ``crs`` member) with the row as properties."""
        path = Path(path)
        features = [
            {"type": "Feature", "geometry": r.geometry, "properties": _json_safe(row)}
            for r, row in zip(self.regions, self.rows())
        ]
        doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
        epsg = CRS.from_wkt(self.crs_wkt).to_epsg() if self.crs_wkt else None
        if epsg:
            doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
        return path


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def pixel_area_m2(crs_wkt: str | None, transform: Sequence[float]) -> float | None:
    """Area of one pixel in m² where the CRS is projected with linear units; else None."""
    if not crs_wkt:
        return None
    crs = CRS.from_wkt(crs_wkt)
    if not crs.is_projected:
        return None
    try:
        _, factor = crs.linear_units_factor
    except Exception:
        return None
    a, b, _, d, e, _ = transform[:6]
    return abs(a * e - b * d) * factor * factor


def _box(transform: Affine, bounds: Window) -> dict[str, Any]:
    (r0, r1), (c0, c1) = bounds
    corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
    return {"type": "Polygon", "coordinates": [[list(transform @ c) for c in corners]]}


def block_regions(plan: BlockPlan, transform: Sequence[float]) -> list[RegionSpec]:
    """One region per output block, named by its block index."""
    t = Affine(*transform[:6])
    return [
        RegionSpec("block_" + "_".join(map(str, b.index)), _box(t, tuple(b.region)), tuple(b.region))
        for b in plan
    ]


def _geojson_crs(doc: dict[str, Any], path: Path) -> CRS:
    name = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    if not name:
        return CRS.from_epsg(4326)
    try:
        return CRS.from_user_input(name)
    except Exception:
        raise InputError(f"{path}: unknown CRS {name!r} in the GeoJSON crs member") from None


def polygon_regions(
    path: str | os.PathLike[str], crs_wkt: str | None, transform: Sequence[float], shape: tuple[int, int]
) -> list[RegionSpec]:
    """Polygons of a GeoJSON file, reprojected to the raster's CRS; named by ``name``/``id`` or index."""
    path = location(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable GeoJSON file ({exc})") from None
    except Exception as exc:
        raise storage_error(path, exc) from None
    if doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif doc.get("type") == "Feature":
        features = [doc]
    else:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    src = _geojson_crs(doc, path)
    if crs_wkt is None:
        raise InputError(f"{path}: regions need a georeferenced raster (this one has no CRS)")
    dst = CRS.from_wkt(crs_wkt)
    inverse = ~Affine(*transform[:6])
    out = []
    for i, feat in enumerate(features):
        geom = feat.get("geometry")
        if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
            raise InputError(f"{path}: feature {i} is not a Polygon or MultiPolygon")
        props = feat.get("properties") or {}
        name = str(props.get("name", feat.get("id", props.get("id", f"region_{i}"))))
        local = transform_geom(src, dst, geom) if src != dst else geom
        polys = [local["coordinates"]] if local["type"] == "Polygon" else local["coordinates"]
        rings = [ring for poly in polys for ring in poly]
        pts = np.array([inverse @ tuple(p[:2]) for ring in rings for p in ring])
        c0, r0 = np.floor(pts.min(0)).astype(int)
        c1, r1 = np.ceil(pts.max(0)).astype(int)
        bounds = ((max(r0, 0), min(r1, shape[0])), (max(c0, 0), min(c1, shape[1])))
        if bounds[0][0] >= bounds[0][1] or bounds[1][0] >= bounds[1][1]:
            bounds = ((0, 0), (0, 0))  # outside the raster: a region with no pixels
        out.append(RegionSpec(name, local, bounds, polygon=True))
    if not out:
        raise InputError(f"{path}: no polygons")
    return out


def _windows(bounds: Window, size: int) -> list[Window]:
    (r0, r1), (c0, c1) = bounds
    return [
        ((r, min(r + size, r1)), (c, min(c + size, c1)))
        for r in range(r0, r1, size)
        for c in range(c0, c1, size)
    ]


def warn_nodata_is_a_class(path: Where, nodata: float | None, num_classes: int) -> None:
    """One warning line when the labels' nodata value is also a class id: that class is never scored."""
    if nodata is not None and float(nodata).is_integer() and 0 <= nodata < num_classes:
        log.warning(
            "%s: nodata value %d is also class %d, so that class's pixels are not scored "
            "(set another nodata value on the labels)",
            path,
            int(nodata),
            int(nodata),
        )


class _Reference:
    """The reference label raster read window by window (class ids; -1 where nodata)."""

    def __init__(self, path: Where, output: RasterInfo | None, shape: tuple[int, int], num_classes: int):
        info = inspect_raster(path)
        if output is not None:
            check_same_grid(output, info)
        elif (info.height, info.width) != shape:
            raise InputError(f"{path}: {info.width}×{info.height} does not match the output's grid")
        self.src = open_raster(path)
        self.nodata = info.nodata
        self.num_classes = num_classes
        warn_nodata_is_a_class(path, info.nodata, num_classes)

    def read(self, win: Window) -> np.ndarray:
        (r0, r1), (c0, c1) = win
        data = self.src.read(1, window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float64)
        bad = ~np.isfinite(data)
        if self.nodata is not None and np.isfinite(self.nodata):
            bad |= data == self.nodata
        lab = np.rint(np.nan_to_num(data, nan=-1)).astype(np.int64)
        lab[bad | (lab < 0) | (lab >= self.num_classes)] = -1
        return lab

    def close(self) -> None:
        self.src.close()


def _accumulate(
    stats: RegionStats,
    store: OutputStore,
    spec: RegionSpec,
    transform: Affine,
    reference: _Reference | None,
) -> None:
    k = stats.num_classes
    for win in _windows(spec.bounds, WINDOW):
        sl = slices(win)
        if spec.polygon:
            (r0, r1), (c0, c1) = win
            wt = transform @ Affine.translation(c0, r0)
            inside = geometry_mask([spec.geometry], (r1 - r0, c1 - c0), wt, invert=True)
            if not inside.any():
                continue
        else:
            inside = None
        labels = np.asarray(store.labels[sl]).astype(np.int64)
        valid = labels != store.nodata
        if inside is not None:
            valid &= inside
            stats.pixels += int(inside.sum())
            stats.nodata += int((inside & ~(labels != store.nodata)).sum())
        else:
            stats.pixels += labels.size
            stats.nodata += int((~valid).sum())
        stats.counts += np.bincount(labels[valid], minlength=k)[:k]
        if store.confidence is not None:
            stats.confidence_sum += float(np.asarray(store.confidence[sl], dtype=np.float64)[valid].sum())
            stats.entropy_sum += float(np.asarray(store.entropy[sl], dtype=np.float64)[valid].sum())
        if reference is not None:
            truth = reference.read(win)
            keep = valid & (truth >= 0)
            stats.confusion += np.bincount(truth[keep] * k + labels[keep], minlength=k * k).reshape(k, k)


def compute_region_table(
    store: OutputStore,
    plan: BlockPlan,
    attrs: dict[str, Any],
    class_names: Sequence[str],
    labels: str | os.PathLike[str] | None = None,
    regions: str | os.PathLike[str] | None = None,
    output_info: RasterInfo | None = None,
) -> RegionTable:
    """Statistics of every block (or every polygon of ``regions``) and of the whole scene.

    ``attrs`` are the scene store's (``crs``, ``transform``); ``output_info``
    describes the exported labels (to check the reference raster's grid).
    """
    k = len(class_names)
    transform = Affine(*attrs["transform"][:6])
    crs = attrs.get("crs")
    shape = tuple(store.labels.shape)
    blocks = block_regions(plan, attrs["transform"])
    specs = polygon_regions(regions, crs, attrs["transform"], shape) if regions is not None else blocks
    reference = _Reference(location(labels), output_info, shape, k) if labels is not None else None

    def fresh(spec: RegionSpec) -> RegionStats:
        cm = np.zeros((k, k), dtype=np.int64) if reference is not None else None
        return RegionStats(spec.name, spec.geometry, k, confusion=cm)

    try:
        scene = fresh(RegionSpec("scene", _box(transform, ((0, shape[0]), (0, shape[1]))), ((0, 0), (0, 0))))
        out = []
        for spec in blocks:
            stats = fresh(spec)
            _accumulate(stats, store, spec, transform, reference)
            _add(scene, stats)
            if regions is None:
                out.append(stats)
        if regions is not None:
            for spec in specs:
                stats = fresh(spec)
                _accumulate(stats, store, spec, transform, reference)
                out.append(stats)
    finally:
        if reference is not None:
            reference.close()
    return RegionTable(list(class_names), crs, pixel_area_m2(crs, attrs["transform"]), out, scene)


def _add(total: RegionStats, part: RegionStats) -> None:
    total.pixels += part.pixels
    total.nodata += part.nodata
    total.counts += part.counts
    total.confidence_sum += part.confidence_sum
    total.entropy_sum += part.entropy_sum
    if total.confusion is not None and part.confusion is not None:
        total.confusion += part.confusion
