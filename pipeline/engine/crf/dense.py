"""DenseCRF: the fully-connected CRF through pydensecrf2 (2D only), an approximation per block."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.engine.crf.features import appearance_features, prepare_inputs
from pipeline.engine.crf.params import CRFParams, Spacing


def _import_dcrf() -> Any:
    """pydensecrf (from the ``pydensecrf2`` package), imported only when DenseCRF is used."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "CRF mode 'dense' needs pydensecrf2: pip install 'gigaseg[crf]' "
            "(or pip install pydensecrf2), or use mode='local'"
        ) from exc
    return dcrf


#: Offset in σ units given to invalid pixels along an extra feature axis of both DenseCRF
#: kernels: exp(-BIG²/2) = 0, so nodata and valid pixels never exchange messages. Small enough
#: for the permutohedral lattice's integer keys.
_NODATA_FEATURE_OFFSET = 100.0


class _Pairwise:
    """Adds DenseCRF's Gaussian pairwise kernels, with the compatibility given (Potts by default)."""

    def __init__(self, crf: Any, dcrf: Any, params: CRFParams, num_classes: int):
        self.crf = crf
        self.dcrf = dcrf
        self.params = params
        self.mu = params.compatibility_matrix(num_classes)

    def compat(self, weight: float) -> float | np.ndarray:
        """pydensecrf's ``compat`` for a kernel of ``weight``."""
        # pydensecrf: a number w is Potts as a reward w·k̂Q for agreeing (the same as the
        # penalty w·(1 - I) up to a per-pixel constant); a matrix is a penalty applied to k̂Q.
        if self.params.compatibility is None:
            return float(weight)
        return np.ascontiguousarray(weight * self.mu, dtype=np.float32)

    def add(self, feats: list[np.ndarray], weight: float) -> None:
        """A kernel over ``feats`` (each ``(Y, X)``, already divided by their σ); none if ``weight <= 0``."""
        if weight <= 0:
            return
        f = np.ascontiguousarray(np.stack([a.reshape(-1) for a in feats]), dtype=np.float32)
        dcrf = self.dcrf
        self.crf.addPairwiseEnergy(
            f, compat=self.compat(weight), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC
        )


def dense_crf(
    probs: torch.Tensor | np.ndarray,
    image: torch.Tensor | np.ndarray | None,
    valid: torch.Tensor | np.ndarray | None,
    params: CRFParams | None = None,
    spacing: Spacing = None,
) -> torch.Tensor | np.ndarray:
    """Refine 2D class probabilities with the fully-connected DenseCRF (pydensecrf2).

    Same model and parameters as :func:`local_crf` but with kernels over every pixel pair
    (permutohedral-lattice filtering, symmetric kernel normalisation as in Krähenbühl & Koltun's
    reference code, under which DeepLab's weights were cross-validated). Per block it is an
    approximation of the whole-scene DenseCRF: the block's halo (:meth:`CRFParams.reach`) bounds
    what it sees. Nodata pixels get a uniform unary and are moved far away on an extra feature
    axis so they exchange no messages with valid pixels; their output is their input.

    Returns the same type as ``probs`` (a tensor on its device, or a numpy array), float32.
    """
    params = params or CRFParams()
    dcrf = _import_dcrf()
    p, img, v = prepare_inputs(probs, image, valid, params.bands)
    if p.ndim != 3:
        raise ValueError("dense_crf supports 2D (C, Y, X) input only; use local_crf for 3D")
    num_classes, height, width = p.shape
    s = params.resolve_spacing(2, spacing)
    p32 = p.to(torch.float32)
    if params.iterations == 0:
        out = torch.where(v, torch.softmax(p32.clamp_min(params.eps).log(), 0), p32)
        return out if isinstance(probs, torch.Tensor) else out.cpu().numpy()

    pn = p32.detach().cpu().numpy()
    vn = v.detach().cpu().numpy()
    n = height * width
    unary = -np.log(np.maximum(pn, params.eps)).reshape(num_classes, n)
    unary[:, ~vn.reshape(-1)] = 0.0  # uniform: no preference where there is no data
    crf = dcrf.DenseCRF(n, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))

    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float32) * s[0], np.arange(width, dtype=np.float32) * s[1], indexing="ij"
    )
    extra = []
    if not vn.all():
        extra = [np.where(vn, 0.0, _NODATA_FEATURE_OFFSET).astype(np.float32)]

    pairwise = _Pairwise(crf, dcrf, params, num_classes)
    pairwise.add([yy / params.smooth_sigma, xx / params.smooth_sigma, *extra], params.smooth_weight)
    if img is not None:
        feats = appearance_features(img, v, params).to(torch.float32).cpu().numpy()
        if feats.shape[0] > 0:
            sa, sb = params.appearance_sigma_pos, params.appearance_sigma_feat
            pairwise.add([yy / sa, xx / sa, *(feats / sb), *extra], params.appearance_weight)

    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    q = q.reshape(num_classes, height, width)
    out_np = np.where(vn[None], q, pn)
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(out_np).to(probs.device)
    return out_np
