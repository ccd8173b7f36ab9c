"""Ingest: an input file → a scene store, chunk by chunk, in parallel with dask.

A tiled GeoTIFF / COG is not copied: its store records where to read it in place
(:mod:`pipeline.inputs.tiled_source`), unless ``copy`` is asked for or the store is
on object storage while the file is local (workers on other nodes could not reach it).

Rasters are read in chunk-aligned windows (groups of chunks per task), each task
opening its own GDAL handle, so the whole raster is never in memory and reads
overlap with compression. Georeferencing, nodata, band names and the source's
content identity travel into the store's attributes untouched.

A store whose recorded content identity matches the input is reused as is: an
unchanged file is not ingested twice, whatever its name.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader

from pipeline.inputs.band_stack import vrt_sources
from pipeline.inputs.raster import RasterInfo, inspect_raster, read_window
from pipeline.inputs.tiled_source import TiledSource, check_tiles_present
from pipeline.stores.location import ObjectLocation, Where, location
from pipeline.stores.object_storage_settings import open_raster
from pipeline.stores.scene import SceneStore, SceneStoreWriter

DEFAULT_CHUNK = 512
CHUNKS_PER_TASK = 4  # per axis: one dask task reads a 4×4-chunk window


def content_id(path: str | os.PathLike[str] | ObjectLocation, chunk_bytes: int = 1 << 22) -> str:
    """BLAKE2b of the file's bytes: the identity ingest reuse is keyed on.

    An object whose store reports an entity tag is identified by it and its size
    (the tag changes with the bytes), without downloading it. A local VRT (a band
    stack's, or the user's own) is identified by its text and the identities of the
    files it reads, so changing any one of them makes a new scene.
    """
    where = location(path)
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(where, Path) and where.suffix.lower() == ".vrt":
        digest.update(where.read_bytes())
        for source in vrt_sources(where):
            digest.update(f"\0{content_id(source, chunk_bytes)}".encode())
        return digest.hexdigest()
    if isinstance(where, ObjectLocation):
        info = where.fs.info(where.url)
        tag = info.get("ETag") or info.get("etag")
        if tag:
            digest.update(f"{where.protocol}:etag:{tag}:{info.get('size')}".encode())
            return digest.hexdigest()
    with where.open("rb") if isinstance(where, ObjectLocation) else open(where, "rb") as fh:
        while data := fh.read(chunk_bytes):
            digest.update(data)
    return digest.hexdigest()


def reusable_store(
    store_path: Where, source_id: str, chunk: Sequence[int], **attrs: Any
) -> SceneStore | None:
    """An existing scene store of the same source and chunks (and, given, the same ``attrs``), or None."""
    if not store_path.exists():
        return None
    try:
        store = SceneStore.open(store_path)
    except (ValueError, FileNotFoundError, KeyError):
        return None
    same = (
        store.attrs.get("source_id") == source_id
        and list(store.chunk_shape) == [min(c, s) for c, s in zip(chunk, store.spatial_shape)]
        and all(store.attrs.get(k) == v for k, v in attrs.items())
    )
    return store if same else None


def tiled_source_for(info: RasterInfo, store_path: Where, local_readers: bool = True) -> TiledSource | None:
    """How a scene store at ``store_path`` can read ``info``'s raster in place, or None (copy it).

    In place: a tiled GeoTIFF that every reader of the store can reach, i.e. a URL, or
    a local file when the store is local too and ``local_readers`` (every block runs on
    this machine: no Ray cluster joined, whose other nodes may not see the file).
    """
    if not info.tiled:
        return None
    local_file = not isinstance(info.path, ObjectLocation)
    if local_file and (isinstance(store_path, ObjectLocation) or not local_readers):
        return None
    return TiledSource(str(info.path.resolve()), info.bands, info.has_mask)


def ingest_raster(
    path: str | os.PathLike[str] | ObjectLocation,
    store_path: str | os.PathLike[str] | ObjectLocation,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    copy: bool = False,
    local_readers: bool = True,
    info: RasterInfo | None = None,
) -> SceneStore:
    """A scene store for a GDAL-readable raster: read in place (a tiled GeoTIFF), or a copy.

    An identical store already there is reused. ``copy``: copy even a tiled file;
    ``local_readers``: see :func:`tiled_source_for`; ``info``: the raster as this run
    already inspected it (its header is not read again: on object storage, requests).
    """
    info = info or inspect_raster(path)
    store_path = location(store_path)
    source_id = content_id(info.path)
    chunks = (chunk, chunk)
    source = None if copy else tiled_source_for(info, store_path, local_readers)
    recorded = None if source is None else source.attrs()
    if (store := reusable_store(store_path, source_id, chunks, tiled_source=recorded)) is not None:
        return store
    if source is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(info.path) as src:
                check_tiles_present(src, info.path, info.bands)
    writer = SceneStoreWriter(
        store_path,
        num_bands=len(info.bands),
        spatial_shape=(info.height, info.width),
        dtype=info.dtype,
        chunk=chunks,
        with_mask=info.has_mask,
        attrs={**info.attrs(), "source_id": source_id},
        source=source,
    )
    if source is not None:
        if on_progress is not None:
            on_progress(info.height * info.width)
        return writer.commit()
    return copy_raster(info, writer, chunk, workers=workers, on_progress=on_progress)


def copy_raster(
    info: RasterInfo,
    writer: SceneStoreWriter,
    chunk: int,
    open_source: Callable[[RasterInfo], AbstractContextManager[DatasetReader]] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SceneStore:
    """Fill ``writer`` from the raster ``info`` describes, in parallel chunk-aligned windows, and commit.

    ``open_source``: opens the dataset each task reads (default: the file itself; the
    resampling step passes GDAL's warper over it). Nodata and masks are read the same way.
    """
    import dask  # here: a tiled input read in place never copies, and its command never loads dask

    step = chunk * CHUNKS_PER_TASK
    windows = [
        ((r, min(r + step, info.height)), (c, min(c + step, info.width)))
        for r, c in itertools.product(range(0, info.height, step), range(0, info.width, step))
    ]
    opener = open_source or (lambda i: open_raster(i.path))
    tasks = [dask.delayed(_copy_windows)(info, writer, batch, opener, on_progress) for batch in windows]
    try:
        dask.compute(*tasks, scheduler="threads", num_workers=workers or min(4, os.cpu_count() or 1))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _copy_windows(
    info: RasterInfo,
    writer: SceneStoreWriter,
    window: tuple[tuple[int, int], tuple[int, int]],
    opener: Callable[[RasterInfo], AbstractContextManager[DatasetReader]],
    on_progress: Callable[[int], None] | None,
) -> None:
    rows, cols = window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with opener(info) as src:
            image, valid = read_window(src, info, rows, cols)
    writer.write((rows, cols), image, valid)
    if on_progress is not None:
        on_progress((rows[1] - rows[0]) * (cols[1] - cols[0]))
