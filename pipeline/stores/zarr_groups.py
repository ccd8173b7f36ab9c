"""Opening a Zarr group at a location: a local folder as it is, a URL through a tuned fsspec store.

Every Zarr store of a run (scene, output, the exports' readers) is opened here, so
what object storage needs is said once. On S3, s3fs's default asks for an object's
size (a HEAD request) before every whole-object read, to split large objects into
parallel range reads; Zarr's objects (metadata, shards) are small, so that HEAD only
doubles the round trips of every read, and for a missing object (a chunk never
written, a member probed) it adds a listing as well. Here it is turned off for Zarr's
own filesystem instance (``max_concurrency=1``); uploads of finished files go through
:mod:`pipeline.stores.transfer` and keep their parallel parts. Measured against a
bucket with a round trip per request: bench/RESULTS.md, "Object storage".

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> group = create_group(location(folder) / "a.zarr")
>>> _ = group.create_array("x", shape=(2,), dtype="uint8")
>>> sorted(open_group(f"{folder}/a.zarr", mode="r").array_keys())
['x']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import zarr
from zarr.storage import FsspecStore, MemoryStore

from pipeline.stores.location import ObjectLocation, location

STORAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"max_concurrency": 1, "use_listings_cache": False},
}
"""fsspec options of Zarr's stores, by protocol (others: fsspec's defaults)."""

Mode = Literal["r", "r+", "a", "w", "w-"]


def zarr_store(where: str | os.PathLike[str] | ObjectLocation, mode: Mode) -> str | FsspecStore:
    """What to hand Zarr for ``where``: a local path as text, a URL as an :class:`FsspecStore`."""
    where = location(where)
    if not isinstance(where, ObjectLocation):
        return str(where)
    options = STORAGE_OPTIONS.get(where.protocol, {})
    return FsspecStore.from_url(where.url, storage_options=options, read_only=mode == "r")


def open_group(where: str | os.PathLike[str] | ObjectLocation, mode: Mode, **kwargs: Any) -> zarr.Group:
    """``zarr.open_group`` at a local folder or a URL (``mode`` as Zarr's)."""
    return zarr.open_group(zarr_store(where, mode), mode=mode, **kwargs)


def create_group(where: str | os.PathLike[str] | ObjectLocation, **kwargs: Any) -> zarr.Group:
    """A new Zarr v3 group where nothing is (the caller removed what was there).

    ``open_group(mode="w")`` would clear the location itself, which on object storage
    is a dozen listing and HEAD requests even when nothing is there; this checks for an
    existing node and writes the group's metadata: two.
    """
    return zarr.create_group(store=zarr_store(where, "w"), zarr_format=3, **kwargs)


def writing_every_chunk(array: zarr.Array) -> zarr.Array:
    """``array`` set to store every chunk written to it, chunks of its fill value included.

    By default Zarr compares each chunk with the fill value before encoding it, to
    skip chunks that hold nothing else. That comparison (``np.array_equal`` against
    the broadcast fill value) costs more CPU than encoding the chunk, and a chunk of
    one value compresses to a few bytes (bench/RESULTS.md, "Cost per pixel"). A store
    read back gives the same values either way.
    """
    return array.with_config({"write_empty_chunks": True})


def create_arrays(group: zarr.Group, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, zarr.Array]:
    """New arrays in ``group``, by name (each spec: ``create_array``'s arguments), made in one round.

    ``group.create_array`` checks the name and the group before writing, one request
    after another: four round trips per array on object storage. Here each array's
    metadata is made by Zarr in memory and all of it written together (Zarr's
    ``create_hierarchy``: one round of checks, one of writes). The arrays come back
    :func:`writing_every_chunk`.
    """
    metadata = {name: zarr.create_array(MemoryStore(), **spec).metadata for name, spec in specs.items()}
    return {
        path.rsplit("/", 1)[-1]: writing_every_chunk(node) for path, node in group.create_hierarchy(metadata)
    }
