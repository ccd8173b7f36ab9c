"""gigaseg's library: segment imagery too large for memory, tile by tile on one global grid.

Importable and testable without Ray or Prefect running; the flows and the
command line are thin layers over it. The public entry points (imported on first
use, so ``import pipeline`` stays cheap):

- :func:`segment` — segment a file into a file (``gigaseg segment`` without
  Prefect): :mod:`pipeline.job.steps`;
- :class:`SegmentConfig` — its settings, checked before any work starts;
- :func:`segment_array` — segment a ``(C, *spatial)`` array already in memory:
  :mod:`pipeline.engine.in_memory`;
- :class:`InputError` — bad input or options, reported as one line.

Segment a file (an untrained registered U-Net here; give a checkpoint in practice):

>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np, rasterio
>>> import pipeline
>>> folder = Path(tempfile.mkdtemp())
>>> pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
>>> with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=64, height=64, count=3,
...                    dtype="uint8", crs="EPSG:32631",
...                    transform=rasterio.transform.from_origin(500_000, 4_000_000, 1, 1)) as dst:
...     dst.write(pixels)
>>> config = pipeline.SegmentConfig(input=folder / "scene.tif", model="arch:unet",
...                                 output=folder / "labels.tif", tile=64, quiet=True)
>>> summary = pipeline.segment(config)
>>> summary.output.name, summary.pixels
('labels.tif', 4096)

Segment the same pixels in memory:

>>> from models import build
>>> model = build("unet", in_channels=3, num_classes=2).eval()
>>> result = pipeline.segment_array(pixels.astype(np.float32), model, tile=64)
>>> result.labels.shape
(64, 64)

Bad input is an :class:`InputError`:

>>> pipeline.segment(pipeline.SegmentConfig(input=folder / "missing.tif", model="arch:unet",
...                                         output=folder / "out.tif"))
Traceback (most recent call last):
...
pipeline.errors.InputError: ...missing.tif: no such file
>>> import shutil
>>> shutil.rmtree(folder)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["InputError", "SegmentConfig", "segment", "segment_array"]

_HOMES = {
    "InputError": "pipeline.errors",
    "SegmentConfig": "pipeline.job.config",
    "segment": "pipeline.job.steps",
    "segment_array": "pipeline.engine.in_memory",
}


def __getattr__(name: str) -> Any:
    """An entry point, imported from its module on first access (torch loads only then)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names with the entry points not yet imported."""
    return sorted([*globals(), *__all__])
