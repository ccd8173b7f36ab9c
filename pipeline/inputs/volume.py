"""Volumes into the scene store, slab by slab: the part every volume format shares.

A format module (:mod:`pipeline.inputs.nifti`, :mod:`pipeline.inputs.dicom`,
:mod:`pipeline.inputs.tiff_stack`, :mod:`pipeline.inputs.ome_zarr`) describes its
input as a :class:`VolumeSource`: the store-order shape ``(z, y, x)``, bands,
dtype, geometry, and a generator of slabs in reading order. Slabs are whole
chunks thick along ``z``, so each write fills whole store chunks and the volume
is never in memory at once (only a slab: ``chunk × y × x`` voxels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.inputs.ingest import reusable_store
from pipeline.inputs.volume_geometry import VolumeGeometry
from pipeline.stores.location import ObjectLocation, location
from pipeline.stores.scene import SceneStore, SceneStoreWriter

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


@dataclass(frozen=True)
class Slab:
    """``data`` ``(bands, z1 - z0, Y, X)`` for ``band is None``, else ``(z1 - z0, Y, X)`` of one band."""

    z0: int
    z1: int
    data: np.ndarray
    band: int | None = None


@dataclass
class VolumeSource:
    """A volume input as ingest sees it."""

    path: Path
    shape: tuple[int, int, int]
    """Store order ``(z, y, x)``."""
    num_bands: int
    dtype: np.dtype
    geometry: VolumeGeometry
    source_id: str
    slabs: Callable[[int], Iterator[Slab]]
    """``slabs(thickness)`` yields every slab once, in the order the format reads best."""
    band_names: list[str] = field(default_factory=list)
    has_mask: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if str(np.dtype(self.dtype)) not in SUPPORTED_DTYPES:
            raise InputError(
                f"{self.path}: unsupported data type {np.dtype(self.dtype)} "
                f"(supported: {', '.join(sorted(SUPPORTED_DTYPES))})"
            )
        if any(s <= 0 for s in self.shape) or self.num_bands <= 0:
            raise InputError(f"{self.path}: volume is empty (shape {self.shape}, {self.num_bands} band(s))")
        if not self.band_names:
            self.band_names = [f"band_{b + 1}" for b in range(self.num_bands)]

    def store_attrs(self) -> dict[str, Any]:
        """Scene-store attributes: geometry, bands, source identity."""
        return {
            **self.geometry.attrs(),
            "nodata": None,
            "nodata_is_nan": bool(self.has_mask),
            "band_names": list(self.band_names),
            "source_dtype": str(np.dtype(self.dtype)),
            "source": str(self.path),
            "source_id": self.source_id,
            **self.attrs,
        }


def ingest_volume(
    source: VolumeSource,
    store_path: str | os.PathLike[str] | ObjectLocation,
    chunk: int | Sequence[int],
    on_progress: Callable[[int], None] | None = None,
) -> SceneStore:
    """Write ``source`` into a scene store (or reuse one made from the same content)."""
    store_path = location(store_path)
    chunks = (chunk,) * 3 if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    if (store := reusable_store(store_path, source.source_id, chunks)) is not None:
        return store
    writer = SceneStoreWriter(
        store_path,
        num_bands=source.num_bands,
        spatial_shape=source.shape,
        dtype=np.dtype(source.dtype),
        chunk=chunks,
        with_mask=source.has_mask,
        attrs=source.store_attrs(),
    )
    try:
        for slab in source.slabs(min(chunks[0], source.shape[0])):
            _write_slab(writer, source, slab)
            if on_progress is not None:
                on_progress((slab.z1 - slab.z0) * source.shape[1] * source.shape[2])
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _write_slab(writer: SceneStoreWriter, source: VolumeSource, slab: Slab) -> None:
    expected = (slab.z1 - slab.z0, *source.shape[1:])
    data = np.asarray(slab.data)
    got = data.shape if slab.band is not None else data.shape[1:]
    if tuple(got) != expected:
        raise InputError(f"{source.path}: slices {slab.z0}–{slab.z1} have shape {got}, expected {expected}")
    sl = (slice(slab.z0, slab.z1), slice(None), slice(None))
    dtype = np.dtype(source.dtype)
    if slab.band is None:
        writer.image[(slice(None), *sl)] = data.astype(dtype, copy=False)
        finite = np.isfinite(data).all(axis=0) if source.has_mask else None
    else:
        writer.image[(slab.band, *sl)] = data.astype(dtype, copy=False)
        finite = np.isfinite(data) if source.has_mask else None
        if finite is not None and slab.band > 0:
            finite &= np.asarray(writer.valid[sl], dtype=bool)
    if finite is not None:
        writer.valid[sl] = finite
