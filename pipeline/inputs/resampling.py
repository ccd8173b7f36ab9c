"""A scene at another resolution than its model's, resampled to the model's: the store the model runs on.

A scene whose resolution (``gsd`` m/px of a projected raster, voxel ``spacing`` mm of
a volume) differs from the card's by more than :data:`~pipeline.inputs.resolution.TOLERANCE`
is resampled, unless ``--native-resolution``, into a second scene store beside the
ingested one (``scene.resampled.zarr``). The tile grid, blocks and halos are that
store's, so blockwise exactness holds on it; :mod:`pipeline.job.map_back` takes the
outputs back to the input's own grid.

The model grid keeps the input's CRS (or world frame) and its outer corner; only the
pixel size changes, to the model's, so the physical extent is kept (the last pixel
may reach past it by less than one model pixel). An input pixel ``i`` (centre index)
and a model pixel ``m`` are related along each axis by ``i = f·m + (f − 1)/2``, with
``f`` = model / input resolution (``f > 1``: the model grid is coarser).

- Rasters go through GDAL's warper (a ``WarpedVRT`` over the input file, read in
  chunk-aligned windows like ingest, with ingest's nodata and mask handling):
  ``average`` when the scene is made coarser, ``bilinear`` when made finer.
- Volumes are resampled trilinearly (``scipy.ndimage.affine_transform``, order 1)
  from the ingested store, one slab of output slices at a time; the valid mask by
  nearest neighbour.

>>> r = Resampling("m/px", (10.0,), (20.0,))
>>> r.describe(), r.factors(2)
('10 m/px → 20 m/px', (2.0, 2.0))
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.inputs.ingest import copy_raster, reusable_store
from pipeline.inputs.raster import RasterInfo
from pipeline.inputs.resolution import TOLERANCE, compared_resolution, format_resolution, resolution_ratio
from pipeline.inputs.volume_geometry import VolumeGeometry, is_volume
from pipeline.stores.location import Where
from pipeline.stores.scene import SceneStore, SceneStoreWriter

log = logging.getLogger("gigaseg")

RESAMPLED_STORE = "scene.resampled.zarr"
"""The resampled scene store's name, beside the ingested ``scene.zarr`` in the work folder."""


@dataclass(frozen=True)
class Resampling:
    """From the scene's resolution to the model's: ``(gsd,)`` in m/px, or ``(z, y, x)`` spacing in mm."""

    unit: str
    scene: tuple[float, ...]
    model: tuple[float, ...]

    def factors(self, ndim: int) -> tuple[float, ...]:
        """Model over scene pixel size along each of ``ndim`` axes (``> 1``: the model grid is coarser)."""
        ratios = tuple(m / s for m, s in zip(self.model, self.scene))
        return ratios * ndim if len(ratios) == 1 else ratios

    def describe(self) -> str:
        """``10 m/px → 20 m/px``: what the summary, the STAC item and the MLflow run record."""
        return f"{format_resolution(self.scene)} {self.unit} → {format_resolution(self.model)} {self.unit}"

    def attrs(self) -> dict[str, Any]:
        """JSON for the resampled store's attributes (and so the run's fingerprint)."""
        return {"unit": self.unit, "from": list(self.scene), "to": list(self.model)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any] | None) -> Resampling | None:
        """The resampling a scene store records (None: an ingested store, at the input's resolution)."""
        if not attrs:
            return None
        scene, model = (tuple(float(v) for v in attrs[k]) for k in ("from", "to"))
        return cls(str(attrs["unit"]), scene, model)


def resampling_for(card: Any, attrs: Mapping[str, Any], native: bool = False) -> Resampling | None:
    """How a scene described by ``attrs`` is resampled for ``card``'s model; None: it runs as it is.

    As it is: ``native`` (``--native-resolution``), a card or scene without a comparable
    resolution, or one within :data:`TOLERANCE` of the model's.
    """
    found = None if native else compared_resolution(card, attrs)
    if found is None:
        return None
    have, want, unit = found
    if resolution_ratio(have, want) <= 1 + TOLERANCE:
        return None
    return Resampling(unit, tuple(have), tuple(want))


def resampled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, ...]:
    """The model grid's shape: the input's extent in model pixels, rounded up (a hair's tolerance)."""
    return tuple(max(1, math.ceil(n / f - 1e-6)) for n, f in zip(shape, factors))


def raster_transform(transform: Sequence[float], factor: float) -> tuple[float, ...]:
    """The model grid's geotransform: the input's upper-left corner, pixels ``factor`` times as large."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    return (a * factor, b * factor, c, d * factor, e * factor, f)


def volume_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """The model grid's affine: voxels ``factors`` times as large, the volume's outer corner kept."""
    scale = np.diag([*(float(f) for f in factors), 1.0])
    scale[:3, 3] = [(f - 1) / 2 for f in factors]
    return np.asarray(affine, dtype=np.float64) @ scale


def resample_scene(
    scene: SceneStore,
    resampling: Resampling,
    store_path: Where,
    chunk: int | Sequence[int],
    raster: RasterInfo | None = None,
    source: str = "",
) -> SceneStore:
    """The scene on the model's grid at ``store_path`` (reused when it was made from the same input).

    ``raster``: the input raster's header (rasters are warped from the file itself).
    """
    nd = len(scene.spatial_shape)
    chunks = (chunk,) * nd if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    factors = resampling.factors(nd)
    shape = resampled_shape(scene.spatial_shape, factors)
    log.warning(
        "%s: resampling from %s to the model's resolution (%s to %s pixels); labels are mapped back",
        source or scene.attrs.get("source"),
        resampling.describe(),
        "×".join(map(str, scene.spatial_shape)),
        "×".join(map(str, shape)),
    )
    source_id = scene.attrs.get("source_id")
    if (store := reusable_store(store_path, source_id, chunks, resampled=resampling.attrs())) is not None:
        return store
    if is_volume(scene.attrs):
        return _resample_volume(scene, resampling, store_path, chunks, shape)
    if raster is None:
        raise ValueError("a raster scene is resampled from its input file: pass its header")
    return _resample_raster(scene, raster, resampling, store_path, chunks, shape)


def _resample_raster(
    scene: SceneStore,
    raster: RasterInfo,
    resampling: Resampling,
    store_path: Where,
    chunks: Sequence[int],
    shape: tuple[int, ...],
) -> SceneStore:
    """GDAL's warper over the input file, copied into the store window by window as ingest does."""
    from rasterio.enums import Resampling as Method

    factor = resampling.factors(2)[0]
    transform = raster_transform(scene.attrs["transform"], factor)
    warped = replace(raster, height=shape[0], width=shape[1], transform=transform)
    method = Method.average if factor > 1 else Method.bilinear
    writer = _writer(scene, resampling, store_path, chunks, shape, {"transform": list(transform)})
    return copy_raster(warped, writer, int(chunks[0]), open_source=lambda info: _warped(raster, info, method))


@contextlib.contextmanager
def _warped(raster: RasterInfo, target: RasterInfo, method: Any) -> Iterator[Any]:
    """The input raster as GDAL's warper shows it on ``target``'s grid (same CRS)."""
    from affine import Affine
    from rasterio.vrt import WarpedVRT

    from pipeline.stores.object_storage_settings import open_raster

    with (
        open_raster(raster.path) as src,
        WarpedVRT(
            src,
            crs=src.crs,
            transform=Affine(*target.transform),
            width=target.width,
            height=target.height,
            resampling=method,
        ) as vrt,
    ):
        yield vrt


def _writer(
    scene: SceneStore,
    resampling: Resampling,
    store_path: Where,
    chunks: Sequence[int],
    shape: tuple[int, ...],
    grid: Mapping[str, Any],
) -> SceneStoreWriter:
    """The resampled store's writer: the scene's bands, dtype and mask on the model grid, with the
    scene's attributes, the model grid's georeference (``grid``) and the resampling recorded."""
    attrs = {k: v for k, v in scene.attrs.items() if k not in ("complete", "nifti_header")}
    return SceneStoreWriter(
        store_path,
        num_bands=scene.num_bands,
        spatial_shape=shape,
        dtype=scene.dtype,
        chunk=chunks,
        with_mask=scene.has_mask,
        attrs={**attrs, **grid, "resampled": resampling.attrs()},
    )


def _resample_volume(
    scene: SceneStore,
    resampling: Resampling,
    store_path: Where,
    chunks: Sequence[int],
    shape: tuple[int, ...],
) -> SceneStore:
    """Trilinear resampling from the ingested store, one slab of output slices (a chunk thick) at a time."""
    geometry = VolumeGeometry.from_attrs(scene.attrs)
    factors = resampling.factors(3)
    new = VolumeGeometry(volume_affine(geometry.affine, factors), geometry.source_format, geometry.slice_axis)
    writer = _writer(scene, resampling, store_path, chunks, shape, new.attrs())
    try:
        for z0 in range(0, shape[0], int(chunks[0])):
            z1 = min(z0 + int(chunks[0]), shape[0])
            image, valid = resample_volume_slab(scene, factors, (z0, z1), shape)
            writer.write(((z0, z1), (0, shape[1]), (0, shape[2])), image, valid)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def resample_volume_slab(
    scene: SceneStore, factors: Sequence[float], slices: tuple[int, int], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-grid slices ``[z0, z1)`` (all bands, and the valid mask when the scene has one).

    The input slices they need are read, and each band resampled with order 1 (values
    at the volume's faces are held: ``mode="nearest"``); integer data is rounded.
    """
    from scipy import ndimage

    z0, z1 = slices
    fz = factors[0]
    first = max(0, math.floor(fz * z0 + (fz - 1) / 2))
    last = min(scene.spatial_shape[0], math.ceil(fz * (z1 - 1) + (fz - 1) / 2) + 2)
    image, valid = scene.read(((first, last), (0, scene.spatial_shape[1]), (0, scene.spatial_shape[2])))
    offset = [fz * z0 + (fz - 1) / 2 - first, *((f - 1) / 2 for f in factors[1:])]
    out_shape = (z1 - z0, *shape[1:])
    dtype = image.dtype
    out = np.empty((image.shape[0], *out_shape), dtype)
    for b, band in enumerate(image):
        data = np.where(valid, band, 0).astype(np.float64)
        resampled = ndimage.affine_transform(
            data, factors, offset, output_shape=out_shape, order=1, mode="nearest"
        )
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            resampled = np.clip(np.rint(resampled), info.min, info.max)
        out[b] = resampled.astype(dtype)
    if not scene.has_mask:
        return out, None
    mask = ndimage.affine_transform(
        np.asarray(valid, np.uint8), factors, offset, output_shape=out_shape, order=0, mode="nearest"
    )
    return out, mask.astype(bool)
