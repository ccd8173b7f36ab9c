"""Process-wide memory settings for long runs: a bounded GDAL cache, freed heap returned.

GDAL's block cache defaults to 5% of RAM and fills while a large file is
ingested or exported, so a process's memory would grow with the file; it is
bounded to :data:`GDAL_CACHE_MB` (a user's own ``GDAL_CACHEMAX`` wins).

glibc keeps freed heap pages (the arrays and tensors of a finished block) in
the process, and what one block leaves behind fragments under the next.
:func:`release_freed_memory` (``malloc_trim``) after each block and after ingest
hands them back: 67 Mpx, 1×1 conv, four 16 Mpx blocks, inference-stage peak RSS
730–744 MiB without, 646–727 MiB with (3–5 runs each), for 0.06 s in all. Most of
the peak is one block's own working set (footprint, accumulator rows, batches).
Since then the engine reuses one input and one probability buffer for every batch
of a block, which leaves fewer holes: the same run's inference peak is now
~490–550 MiB.

Tried and left out (what stays resident is mostly freed heap that the per-batch
arrays churn through: at the 67 Mpx 1×1-conv peak, 194 of the main heap's 372 MiB
were free):

- fixing glibc's mmap threshold at 1 MiB (so freed arrays go straight back to the
  system) cut the 67 Mpx peak RSS by ~80 MiB but made every activation of a U-Net
  forward a fresh mapping to fault in: 45% slower (4 Mpx U-Net, 9.9 vs 6.8 s);
  at 4 MiB, 1×1 conv: −140 MiB, +1.4 s of 7; at 17 MiB: −30 MiB, no cost on this
  bench, but a threshold tuned to one model's array sizes;
- ``malloc_trim`` after every finished row range: −60 MiB, +0.8 s of 7 (1×1 conv,
  67 Mpx): the returned pages are faulted in again by the next batch;
- each block's accumulator, batch buffers and labels in their own anonymous
  mappings (returned whole when the block ends): −20–25 MiB at that peak, but the
  in-memory engine took 2.3–3.4 s instead of 2.1–2.7 s (4 blocks, interleaved
  runs): every block faults its pages in afresh where the heap reuses warm ones.
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
