"""Process-wide memory settings for long runs: a bounded GDAL cache, freed heap returned.

GDAL's block cache defaults to 5% of RAM and fills while a large file is
ingested or exported, so a process's memory would grow with the file; it is
bounded to :data:`GDAL_CACHE_MB` (a user's own ``GDAL_CACHEMAX`` wins).

glibc keeps freed heap pages (the arrays and tensors of a finished block) in
the process, and what one block leaves behind fragments under the next.
:func:`release_freed_memory` (``malloc_trim``) after each block and after ingest
hands them back, for a lower peak at almost no cost. Most of the peak is one
block's own working set (footprint, accumulator rows, batches).

Tried and left out, because each costs more time than the memory it saves or is
tuned to one model's array sizes: a fixed mmap threshold, ``malloc_trim`` after
every row range, per-block anonymous mappings. The numbers for all of these are in
bench/RESULTS.md ("Freed heap: malloc_trim and what was left out").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

GDAL_CACHE_MB = 64


def bound_process_memory() -> None:
    """Bound GDAL's block cache unless the user set ``GDAL_CACHEMAX``."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """Return the heap's freed pages to the system (glibc ``malloc_trim``; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
