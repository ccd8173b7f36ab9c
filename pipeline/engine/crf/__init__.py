"""CRF refinement of class probabilities: a local (windowed) mean-field CRF and DenseCRF.

Two CRFs share one parameter set, :class:`CRFParams`:

* :func:`local_crf` — a fully-connected CRF's mean-field updates with both pairwise kernels
  truncated to a window of ``radius`` around each pixel, as in Convolutional CRFs (Teichmann &
  Cipolla 2018). Torch, N-D (2D ``(C, Y, X)`` and 3D ``(C, Z, Y, X)``), runs on the tensor's
  device. Each iteration moves information by at most the window radius, so the output at a
  pixel depends only on inputs within ``iterations × radius`` of it (:meth:`CRFParams.reach`).
  That makes blockwise refinement with a halo of ``reach`` *exactly* equal to refining the whole
  scene in one piece — the pipeline's blocks-are-exact invariant holds with the CRF on.
* :func:`dense_crf` — the fully-connected CRF of Krähenbühl & Koltun (2011) through
  ``pydensecrf2`` (2D only, an optional extra). Its kernels span the whole input, so run per
  block (with the same halo) it is an *approximation* of the whole-scene DenseCRF: pixels near
  a block see only the block plus halo, not the scene.

Model (both CRFs). With probabilities ``p`` from the network, unary ``ψ_u(l) = -log p(l)`` and

    k(i, j) = w1 · exp(-|x_i - x_j|² / 2σα² - |f_i - f_j|² / 2σβ²)     (appearance, bilateral)
            + w2 · exp(-|x_i - x_j|² / 2σγ²)                          (smoothness, Gaussian)

where ``x`` are positions in spacing units and ``f`` appearance features (chosen image bands
scaled to a 0–255-like range), one mean-field iteration is

    m_i(l') = Σ_{j ≠ i, j in window, j valid} k̂(i, j) Q_j(l')
    Q_i(l)  = softmax_l( -ψ_u,i(l) - Σ_{l'} μ(l, l') m_i(l') )

with compatibility ``μ`` (Potts: ``μ(l, l') = [l ≠ l']``). With ``normalize_kernels=True``
(default) each of the two (unweighted) kernels is divided by its normaliser ``n_i = 1 + Σ_{j≠i} k(i, j)``
over the valid window — its value at the pixel itself (1) plus its row sum — so messages are
weighted averages of the neighbours' Q bounded by the kernel weight, as under DenseCRF's kernel
normalisation (whose lattice filter also counts the pixel itself) for which DeepLab
cross-validated w1, w2; a pixel unlike all its neighbours is not pulled by them. The
normaliser only reads the window, so it does not widen the reach. ``normalize_kernels=False``
uses the raw kernel (Krähenbühl & Koltun's formula).

Nodata: invalid pixels (``valid`` False, or non-finite image / probabilities) send no messages
and receive none; their output is their input probabilities. The array border is a hard edge:
nothing comes from outside it.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.engine.crf.dense import dense_crf
from pipeline.engine.crf.features import appearance_features, band_stats
from pipeline.engine.crf.local import local_crf
from pipeline.engine.crf.params import DEFAULT_ITERATIONS, FEATURE_RANGE, CRFParams, Spacing, window_offsets

__all__ = [
    "DEFAULT_ITERATIONS",
    "FEATURE_RANGE",
    "CRFParams",
    "appearance_features",
    "band_stats",
    "dense_crf",
    "local_crf",
    "refine",
    "window_offsets",
]


def refine(
    probs: torch.Tensor | np.ndarray,
    image: torch.Tensor | np.ndarray | None,
    valid: torch.Tensor | np.ndarray | None,
    params: CRFParams,
    spacing: Spacing = None,
) -> torch.Tensor | np.ndarray:
    """Dispatch on ``params.mode``: the engine's single entry point for CRF refinement."""
    if params.mode == "dense":
        return dense_crf(probs, image, valid, params, spacing)
    return local_crf(probs, image, valid, params, spacing)
