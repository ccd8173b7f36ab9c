"""Process-wide memory settings for long runs: a bounded GDAL cache, freed arrays given back.

Two things made a segmenting process grow past what its blocks need:

- GDAL's block cache defaults to 5% of RAM and fills while a large file is
  ingested or exported; it is bounded to :data:`GDAL_CACHE_MB` (a user's own
  ``GDAL_CACHEMAX`` wins).
- glibc raises its mmap threshold each time a large block is freed (up to
  32 MiB), after which the per-batch tensors and per-block arrays (8–64 MiB)
  come from the heap, and freed heap memory mostly stays in the process. A
  fixed threshold keeps every allocation of 1 MiB or more in its own mapping,
  returned to the system when freed.

Measured on a 67 Mpx scene, block 4096 (``gigaseg segment`` in one process):
peak RSS 711 → 595 MiB (bench/RESULTS.md, "Peer tools").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

GDAL_CACHE_MB = 64
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def bound_process_memory() -> None:
    """Bound GDAL's cache and fix glibc's mmap threshold (a no-op where there is no glibc)."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return
