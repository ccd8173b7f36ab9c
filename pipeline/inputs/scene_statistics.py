"""Scene-wide intensity statistics, for per-volume normalisation (MR / EM z-score, percentiles).

A model card may ask for ``{"kind": "zscore"}`` (subtract the volume's mean,
divide by its standard deviation, per band, over valid voxels) or
``{"kind": "percentile", "lower": 0.5, "upper": 99.5}`` (clip to the volume's
percentiles and map to [0, 1]). Those parameters belong to the whole scene, never
to a block, so they are computed once, here, in one pass over the store slab by
slab (memory: one slab), and turned into a fixed ``meanstd`` / ``window`` spec
(:func:`pipeline.inputs.normalization.resolve_normalization`) that every block then
applies identically. Training resolves its volume with the same functions, so
inference normalises exactly as training did.

Mean and standard deviation are exact (float64 sums); percentiles come from a
regular subsample of at most ``MAX_SAMPLE`` voxels per band (every ``step``-th
voxel along each axis, the same lattice whatever the slab size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.tiling import regions
from pipeline.tiling.grid import Region

MAX_SAMPLE = 4_000_000
Reader = Callable[[Region], tuple[np.ndarray, np.ndarray]]


def _sample_step(shape: Sequence[int], max_sample: int) -> int:
    total = math.prod(shape)
    return max(1, math.ceil((total / max_sample) ** (1 / len(shape)))) if total > max_sample else 1


def scene_statistics(
    read: Reader, shape: Sequence[int], slab: int, want_sample: bool, max_sample: int = MAX_SAMPLE
) -> dict[str, Any]:
    """Per-band mean, std and (optionally) a regular subsample of valid values, one slab at a time."""
    shape = tuple(int(s) for s in shape)
    step = _sample_step(shape, max_sample)
    sums: np.ndarray | None = None
    squares: np.ndarray | None = None
    count = 0
    samples: list[np.ndarray] = []
    for a in range(0, shape[0], slab):
        b = min(shape[0], a + slab)
        image, valid = read(((a, b), *((0, s) for s in shape[1:])))
        values = image[:, valid].astype(np.float64)  # (bands, n)
        sums = values.sum(axis=1) if sums is None else sums + values.sum(axis=1)
        squares = (values**2).sum(axis=1) if squares is None else squares + (values**2).sum(axis=1)
        count += values.shape[1]
        if want_sample:
            lattice = (slice((-a) % step, None, step), *(slice(None, None, step),) * (len(shape) - 1))
            samples.append(image[(slice(None), *lattice)][:, valid[lattice]])
    if sums is None or squares is None or count == 0:
        raise ValueError("no valid voxels to compute statistics from")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    out: dict[str, Any] = {"mean": mean.tolist(), "std": std.tolist(), "count": count}
    if want_sample:
        out["sample"] = np.concatenate(samples, axis=1)
    return out


def array_reader(image: np.ndarray, valid: np.ndarray | None = None) -> Reader:
    """A :data:`Reader` over in-memory arrays (training uses this on its volume)."""
    mask = np.ones(image.shape[1:], dtype=bool) if valid is None else valid

    def read(region: Region) -> tuple[np.ndarray, np.ndarray]:
        sl = regions.slices(region)
        return image[(slice(None), *sl)], mask[sl]

    return read
