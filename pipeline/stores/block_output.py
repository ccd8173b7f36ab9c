"""What one block hands the output store: its labels and the optional per-pixel maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BlockOutput:
    """What a block writes: labels and (optionally) probabilities of its own region.

    ``confidence`` (top-class probability) and ``entropy`` (nats) are per-pixel
    uncertainty maps, kept when region metrics are wanted (NaN where nodata).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    confidence: np.ndarray | None = None
    entropy: np.ndarray | None = None
    label_stats: np.ndarray | None = None
    """``(classes, 2)`` float64: voxels per label and the sum of their winning probability."""
    polygons: bytes | None = None
    """The block's polygon piece (:mod:`pipeline.exporters.polygon_pieces`), when polygons are wanted."""
