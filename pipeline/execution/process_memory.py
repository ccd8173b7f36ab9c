"""Process-wide memory settings: a bounded GDAL cache, large arrays off the heap, freed heap returned.

GDAL's block cache defaults to 5% of RAM and fills while a large file is
ingested or exported, so a process's memory would grow with the file; it is
bounded to :data:`GDAL_CACHE_MB` (a user's own ``GDAL_CACHEMAX`` wins).

glibc serves an allocation from its heap or, above a threshold, from a memory
mapping of its own that is unmapped when freed. The threshold starts at 128 KiB
and rises to the size of each mapped chunk freed, up to 32 MiB: after a block's
29 MiB accumulator is freed, every later batch's model output (16 MiB for
8 × 2 classes × 512²) comes from the heap, and the holes those leave between longer-lived
arrays stay resident. :func:`bound_process_memory` fixes the threshold at
:data:`OWN_MAPPING_MB` (and the heap's top trimmed beyond twice that, glibc's own
ratio), so arrays that large always come and go as mappings (a user's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or malloc tunables win).

The heap's freed pages (a finished block's smaller arrays and tensors) are kept by
glibc, and what one block leaves behind fragments under the next:
:func:`release_freed_memory` (``malloc_trim``) after each block and after ingest
hands them back, for a lower peak at almost no cost.

What was tried and left out, and the numbers behind each choice, are in
bench/RESULTS.md ("Freed heap: malloc_trim and what was left out").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

GDAL_CACHE_MB = 64
OWN_MAPPING_MB = 16
"""Allocations of this many MiB or more get a memory mapping of their own (glibc)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_USERS_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def bound_process_memory() -> None:
    """Bound GDAL's block cache and keep large arrays off the heap, unless the user set either.

    Called once at a command's (or an actor's) start, before the work allocates.
    """
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    mallopt = _libc("mallopt")
    users_own = any(k in os.environ for k in _USERS_MALLOC_SETTINGS) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
    if mallopt is not None and not users_own:
        mallopt(_M_MMAP_THRESHOLD, OWN_MAPPING_MB << 20)
        mallopt(_M_TRIM_THRESHOLD, 2 * OWN_MAPPING_MB << 20)


@functools.cache
def _libc(function: str) -> ctypes._CFuncPtr | None:
    """A glibc function, or None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> ctypes._CFuncPtr | None:
    return _libc("malloc_trim")


def release_freed_memory() -> None:
    """Return the heap's freed pages to the system (glibc ``malloc_trim``; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
