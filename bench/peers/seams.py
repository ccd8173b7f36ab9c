"""Seam error: each row's output against one untiled pass of the same model over the whole scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.peers.measure import RowResult
from bench.peers.rows import CHANNELS_LAST_ROWS

BAND = 8
"""Half-width (px) of the tile-border band where label disagreement is counted."""
FRAME = 64
"""Frame (px) at the scene's edge left out of the seam figures (see :func:`seam_error`)."""


def reference_for(row: str, refs: dict[str, RowResult]) -> RowResult | None:
    """The finished reference a row's seam error is measured against (channels-last rows: reference-cl)."""
    ref = refs.get("reference-cl" if row.split(" ")[0] in CHANNELS_LAST_ROWS else "reference")
    return ref if ref is not None and ref.status == "ok" else None


def border_band(shape: tuple[int, int], tile: int, stride: int) -> np.ndarray:
    """Pixels within ``BAND`` px of a tile edge of the overlapping grid or of the non-overlapping one."""
    masks = []
    for size in shape:
        edges = np.unique(
            np.concatenate(
                [np.arange(0, size, stride), np.arange(tile, size, stride), np.arange(0, size, tile)]
            )
        )
        edges = edges[(edges > 0) & (edges < size)]
        near = np.zeros(size, bool)
        for e in edges:
            near[max(0, e - BAND) : e + BAND] = True
        masks.append(near)
    return masks[0][:, None] | masks[1][None, :]


def seam_error(row_out: Path, ref_out: Path, band: np.ndarray) -> dict[str, float]:
    """|Δp| against the untiled pass (mean, p99) and label disagreement in the border band (%).

    Seams are inside the scene: the mean / p99 / band figures leave out a ``FRAME``-px
    frame at the scene's edge, where the difference comes from how each tool pads
    the scene's outside (the untiled pass zero-pads; gigaseg reflects, MONAI and the
    chips put a window flush with the edge), not from tiling. ``mean_all`` keeps it.
    """
    out: dict[str, float] = {}
    inner = (slice(FRAME, -FRAME), slice(FRAME, -FRAME))
    ref_l = np.load(ref_out / "labels.npy", mmap_mode="r")[inner]
    lab = np.load(row_out / "labels.npy", mmap_mode="r")[inner]
    b = band[inner]
    out["band_disagree"] = float(100 * (np.asarray(lab)[b] != np.asarray(ref_l)[b]).mean())
    if (row_out / "probs.npy").exists():
        ref_p = np.load(ref_out / "probs.npy", mmap_mode="r")
        p = np.load(row_out / "probs.npy", mmap_mode="r")
        diff = np.abs(np.asarray(p, np.float32) - np.asarray(ref_p, np.float32))
        out["mean_all"] = float(diff.mean())
        diff = diff[(slice(None), *inner)].ravel()
        out["mean"] = float(diff.mean())
        out["p99"] = float(np.quantile(diff, 0.99))
    return out
