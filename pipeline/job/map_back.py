"""The outputs of a resampled scene, mapped back to the input's own grid before anything is exported.

When the model ran on a resampled scene (:mod:`pipeline.inputs.resampling`), its
output store is on the model's grid. This step writes a second output store on the
input's grid (CRS, transform / affine and shape the input's: invariant 5), block by
block over a plan of the input grid, so memory stays bounded by the block and a
killed run resumes here too. The job it returns has the input scene, that store and
that plan, so every exporter (COG, polygons, region metrics, STAC, NIfTI, OME-Zarr)
sees the input grid and needs no branch of its own.

- Rasters (GDAL's warper, one block and a margin of the model grid at a time):
  labels by ``nearest`` when the model grid is coarser and by ``mode`` when it is
  finer; probabilities, confidence and entropy by ``bilinear`` / ``average``.
- Volumes (``scipy.ndimage.affine_transform``): labels order 0, the maps order 1.

Input nodata stays nodata (invariant 6): the input's mask is applied after mapping.
Per-label pixel counts are counted on the mapped labels; their mean winning
probability is the model grid's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from pipeline.inputs.volume_geometry import is_volume
from pipeline.job.plan import Job
from pipeline.stores.block_output import BlockOutput
from pipeline.stores.output import OutputStore, fingerprint
from pipeline.tiling import regions
from pipeline.tiling.blocks import Block, BlockPlan
from pipeline.tiling.grid import Region, TileGrid

MAPPED_STORE = "output.mapped.zarr"
"""The output store on the input's grid, beside the model grid's ``output.zarr`` in the work folder."""


@dataclass(frozen=True)
class AxisMap:
    """Along one axis: input index ``i`` ↔ model index ``m`` = ``(i − (f − 1)/2) / f``."""

    factor: float
    model_size: int

    def model_span(self, start: int, stop: int, margin: int) -> tuple[int, int]:
        """The model-grid indices input pixels ``[start, stop)`` are computed from, plus ``margin``."""
        lo = (start - (self.factor - 1) / 2) / self.factor
        hi = (stop - 1 - (self.factor - 1) / 2) / self.factor
        return max(0, math.floor(lo) - margin), min(self.model_size, math.ceil(hi) + 1 + margin)


def map_back(job: Job) -> Job:
    """The job on the input's grid (its outputs mapped there); a job that was not resampled as it is."""
    if job.resampling is None or job.input_scene is None:
        return job
    t0 = time.perf_counter()
    scene = job.input_scene
    block_size, chunk = job.config.block_and_chunk(len(scene.spatial_shape))
    grid = TileGrid.create(scene.spatial_shape, job.grid.tile, job.config.overlap)
    plan = BlockPlan.create(grid, block_size, chunk)
    store = OutputStore.open_or_create(
        job.config.resolved_work_dir / MAPPED_STORE,
        plan,
        job.num_classes,
        job.store.probabilities is not None,
        fingerprint({"model_grid": job.store.group.attrs["fingerprint"], "map_back": job.resampling.attrs()}),
        attrs={"class_names": job.card.class_names},
        with_uncertainty=job.store.confidence is not None,
    )
    mean_probability = _mean_probability(job.store)
    for block in store.pending(plan):
        store.write_block(block, _map_block(job, block, mean_probability))
    job.timings["map_back"] = time.perf_counter() - t0
    return replace(job, scene=scene, grid=grid, plan=plan, store=store, input_scene=None)


def _mean_probability(store: OutputStore) -> np.ndarray:
    """Per label: the mean winning probability on the model grid (0 for a label that never won)."""
    stats = store.label_stats()
    return np.divide(stats[:, 1], stats[:, 0], out=np.zeros(len(stats)), where=stats[:, 0] > 0)


def _map_block(job: Job, block: Block, mean_probability: np.ndarray) -> BlockOutput:
    """One input-grid block's outputs, read from the model grid and mapped."""
    source = job.store
    volume = is_volume(job.input_scene.attrs)
    mapper = _VolumeMapper(job, block.region) if volume else _RasterMapper(job, block.region)
    labels = mapper.labels()
    probabilities = mapper.maps(source.probabilities) if source.probabilities is not None else None
    confidence = mapper.maps(source.confidence) if source.confidence is not None else None
    entropy = mapper.maps(source.entropy) if source.entropy is not None else None
    invalid = ~job.input_scene.valid(block.region)
    labels[invalid] = source.nodata
    for values in (probabilities, confidence, entropy):
        if values is not None:
            values[..., invalid] = np.nan
    counts = np.bincount(labels[labels != source.nodata].ravel(), minlength=job.num_classes)
    counts = counts[: job.num_classes].astype(np.float64)
    output = BlockOutput(
        labels, probabilities, confidence, entropy, np.stack([counts, counts * mean_probability], axis=1)
    )
    if job.config.vector is not None:
        origin = [start for start, _ in block.region]
        from pipeline.exporters.polygon_pieces import BlockPolygons  # scikit-image: only for polygons

        output.polygons = BlockPolygons.from_labels(labels, confidence, origin, source.nodata).to_bytes()
    return output


class _RasterMapper:
    """GDAL's warper from the model grid's window around a block to the block (same CRS)."""

    MARGIN = 2

    def __init__(self, job: Job, region: Region):
        from affine import Affine

        factor = job.resampling.factors(2)[0]
        self.coarser = factor > 1
        self.crs = job.input_scene.attrs.get("crs")
        model_transform = Affine(*job.scene.attrs["transform"][:6])
        input_transform = Affine(*job.input_scene.attrs["transform"][:6])
        margin = self.MARGIN + math.ceil(1 / factor)
        axes = [AxisMap(factor, n) for n in job.scene.spatial_shape]
        self.source: Region = tuple(a.model_span(s, e, margin) for a, (s, e) in zip(axes, region))
        (r0, _), (c0, _) = self.source
        self.source_transform = model_transform @ Affine.translation(c0, r0)
        (br, _), (bc, _) = region
        self.transform = input_transform @ Affine.translation(bc, br)
        self.shape = tuple(e - s for s, e in region)
        self.store = job.store

    def labels(self) -> np.ndarray:
        """Nearest model pixel when the model grid is coarser, the most frequent one when finer."""
        from rasterio.enums import Resampling as Method

        data = np.asarray(self.store.labels[regions.slices(self.source)])
        return self._warp(data, Method.nearest if self.coarser else Method.mode, self.store.nodata)

    def maps(self, array) -> np.ndarray:
        """Per-pixel maps (probabilities per class, confidence, entropy): bilinear / average, float32."""
        from rasterio.enums import Resampling as Method

        lead = (slice(None),) * (array.ndim - 2)
        data = np.asarray(array[(*lead, *regions.slices(self.source))], dtype=np.float32)
        return self._warp(data, Method.bilinear if self.coarser else Method.average, np.nan)

    def _warp(self, data: np.ndarray, method, nodata: float) -> np.ndarray:
        from rasterio.warp import reproject

        out = np.full((*data.shape[:-2], *self.shape), nodata, dtype=data.dtype)
        reproject(
            data,
            out,
            src_transform=self.source_transform,
            src_crs=self.crs,
            src_nodata=nodata,
            dst_transform=self.transform,
            dst_crs=self.crs,
            dst_nodata=nodata,
            resampling=method,
        )
        return out


class _VolumeMapper:
    """``affine_transform`` from the model grid's region around a block to the block's voxels."""

    MARGIN = 2

    def __init__(self, job: Job, region: Region):
        self.factors = job.resampling.factors(3)
        axes = [AxisMap(f, n) for f, n in zip(self.factors, job.scene.spatial_shape)]
        self.source: Region = tuple(a.model_span(s, e, self.MARGIN) for a, (s, e) in zip(axes, region))
        self.offset = [
            (s - (f - 1) / 2) / f - m0 for f, (s, _), (m0, _) in zip(self.factors, region, self.source)
        ]
        self.shape = tuple(e - s for s, e in region)
        self.store = job.store

    def labels(self) -> np.ndarray:
        """Order 0: the label of the nearest model voxel."""
        data = np.asarray(self.store.labels[regions.slices(self.source)])
        return self._map(data, order=0).astype(data.dtype)

    def maps(self, array) -> np.ndarray:
        """Order 1 (trilinear), float32; a leading class axis is mapped class by class."""
        lead = (slice(None),) * (array.ndim - 3)
        data = np.asarray(array[(*lead, *regions.slices(self.source))], dtype=np.float32)
        if data.ndim == 3:
            return self._map(data, order=1)
        return np.stack([self._map(d, order=1) for d in data])

    def _map(self, data: np.ndarray, order: int) -> np.ndarray:
        from scipy import ndimage

        inverse = [1 / f for f in self.factors]
        return ndimage.affine_transform(
            data, inverse, self.offset, output_shape=self.shape, order=order, mode="nearest"
        )
