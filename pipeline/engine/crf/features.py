"""What both CRFs read besides the probabilities: scene band statistics and appearance features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.engine.crf.params import FEATURE_RANGE, CRFParams


def band_stats(
    image: np.ndarray | torch.Tensor,
    valid: np.ndarray | torch.Tensor | None = None,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    max_samples: int = 1_000_000,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band (low, high) percentiles for ``CRFParams.band_low/band_high``.

    Call it once per scene (e.g. on an overview or a strided read), not per block: the CRF's
    output must not depend on where blocks fall. Pixels outside ``valid`` and non-finite
    values are ignored; a constant band gets ``high = low + 1``.
    """
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    chosen = list(range(img.shape[0])) if bands is None else list(bands)
    flat = img[chosen].reshape(len(chosen), -1).astype(np.float64)
    keep = np.isfinite(flat).all(axis=0)
    if valid is not None:
        v = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else valid
        keep &= np.asarray(v, dtype=bool).reshape(-1)
    flat = flat[:, keep]
    if flat.shape[1] == 0:
        raise ValueError("no valid pixels to compute band statistics from")
    if flat.shape[1] > max_samples:
        pick = np.random.default_rng(seed).choice(flat.shape[1], max_samples, replace=False)
        flat = flat[:, pick]
    low, high = np.percentile(flat, percentiles, axis=1)
    high = np.where(high > low, high, low + 1.0)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def appearance_features(image: torch.Tensor, valid: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """Chosen bands scaled to 0–255 (clipped) when stats are given; zero under invalid pixels.

    Returns ``(F, *spatial)`` in the image's floating dtype (float32 at least).
    """
    bands = list(range(image.shape[0])) if params.bands is None else list(params.bands)
    if any(b < -image.shape[0] or b >= image.shape[0] for b in bands):
        raise ValueError(f"bands {bands} out of range for an image with {image.shape[0]} bands")
    dtype = image.dtype if image.is_floating_point() and image.element_size() >= 4 else None
    f = image[bands].to(dtype or torch.float32)
    if params.band_low is not None:
        if len(params.band_low) != len(bands):
            raise ValueError("band_low/band_high need one entry per chosen band")
        shape = (len(bands),) + (1,) * (f.ndim - 1)
        low = torch.tensor(params.band_low, dtype=f.dtype, device=f.device).view(shape)
        high = torch.tensor(params.band_high, dtype=f.dtype, device=f.device).view(shape)
        f = ((f - low) * (FEATURE_RANGE / (high - low))).clamp(0.0, FEATURE_RANGE)
    return torch.where(valid, f, torch.zeros((), dtype=f.dtype, device=f.device))


def prepare_inputs(
    probs: torch.Tensor | np.ndarray,
    image: torch.Tensor | np.ndarray | None,
    valid: torch.Tensor | np.ndarray | None,
    bands: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Tensors on probs' device; ``valid`` narrowed to finite probs and finite chosen bands."""
    p = torch.as_tensor(probs)
    if p.ndim not in (3, 4):
        raise ValueError(f"probs must be (C, Y, X) or (C, Z, Y, X), got shape {tuple(p.shape)}")
    spatial = tuple(p.shape[1:])
    v = (
        torch.ones(spatial, dtype=torch.bool, device=p.device)
        if valid is None
        else torch.as_tensor(valid, device=p.device).to(torch.bool)
    )
    if tuple(v.shape) != spatial:
        raise ValueError(f"valid {tuple(v.shape)} does not match probs' spatial shape {spatial}")
    v = v & torch.isfinite(p).all(0)
    img = None
    if image is not None:
        img = torch.as_tensor(image, device=p.device)
        if tuple(img.shape[1:]) != spatial or img.ndim != p.ndim:
            raise ValueError(f"image {tuple(img.shape)} must be (B, *{spatial})")
        if img.is_floating_point():
            used = img if bands is None else img[list(bands)]
            v = v & torch.isfinite(used).all(0)
    return p, img, v
