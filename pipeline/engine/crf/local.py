"""The local (windowed) mean-field CRF: torch, 2D and 3D, exact blockwise with a halo of its reach."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine.crf.features import appearance_features, prepare_inputs
from pipeline.engine.crf.params import CRFParams, Spacing, window_offsets
from pipeline.tiling import regions

Region = tuple[slice, ...]


def _pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Zero-pad the trailing spatial axes by ``pads`` on both sides (``x`` has a leading axis)."""
    widths = [w for r in reversed(pads) for w in (r, r)]
    return F.pad(x, widths) if any(pads) else x


#: Largest exponent fed to exp: exp(-80) ≈ 2e-35 is still a normal float32, and avoiding
#: denormal underflow keeps exp ~10x faster on CPU. The kernel normalisers are ≥ 1 (they count
#: the pixel itself), so the floor changes messages by < 1e-33.
_MAX_EXPONENT = 80.0

#: Bytes of ``C × region`` message accumulator per chunk: small enough to stay in cache while
#: every window offset is added into it.
_CHUNK_BYTES = 2 * 2**20


def _shifted(padded: torch.Tensor, pads: Sequence[int], off: Sequence[int], region: Region):
    """View of a padded ``(..., *spatial)`` tensor holding, for each ``i`` in region, ``i + off``."""
    idx = tuple(slice(r + o + s.start, r + o + s.stop) for r, o, s in zip(pads, off, region))
    return padded[(Ellipsis, *idx)]


def _chunks(shape: Sequence[int], channels: int, itemsize: int) -> list[Region]:
    """Split the spatial extent into row (2D) / slab (3D) regions of about ``_CHUNK_BYTES``."""
    target = max(1, _CHUNK_BYTES // (channels * itemsize))
    full = regions.slices(regions.whole(shape))
    inner = math.prod(shape[1:])
    if inner <= target or len(shape) == 2:
        step = max(1, target // inner)
        return [(slice(s, min(s + step, shape[0])), *full[1:]) for s in range(0, shape[0], step)]
    # 3D with large slices: split each slice along Y as well.
    step = max(1, target // math.prod(shape[2:]))
    return [
        (slice(z, z + 1), slice(y, min(y + step, shape[1])), *full[2:])
        for z in range(shape[0])
        for y in range(0, shape[1], step)
    ]


class _Kernels:
    """Per-offset message weights ``W_d(i) = k̂(i, i + d)`` for one refinement call.

    ``k̂`` is ``w1·app + w2·smooth``, each kernel divided by its normaliser when
    ``normalize_kernels`` (the kernel's value at the pixel itself, 1, plus its sum over the
    valid window: messages are then weighted averages of the neighbours' Q, and a pixel unlike
    all its neighbours is not pulled by them). The maps are computed once and cached when they
    fit in ``max_cache_mb``, otherwise regenerated per region on every sweep (same values).
    """

    def __init__(
        self,
        feats: torch.Tensor | None,
        valid: torch.Tensor,
        params: CRFParams,
        offsets: list[tuple[tuple[int, ...], float]],
        pads: tuple[int, ...],
        dtype: torch.dtype,
    ) -> None:
        self.shape = tuple(valid.shape)
        self.whole: Region = regions.slices(regions.whole(self.shape))
        self.pads = pads
        self.offsets = offsets
        w1, w2 = params.appearance_weight, params.smooth_weight
        sa2, sg2 = 2 * params.appearance_sigma_pos**2, 2 * params.smooth_sigma**2
        self.app_pos = [math.exp(-d2 / sa2) for _, d2 in offsets]
        self.smooth = [math.exp(-d2 / sg2) for _, d2 in offsets]
        self.use_app = feats is not None and feats.shape[0] > 0 and w1 > 0
        # Per-pixel multipliers of each kernel: the weight, over the normaliser if any.
        self.app_scale: torch.Tensor | float = w1
        self.smooth_scale: torch.Tensor | float = w2
        if self.use_app:
            assert feats is not None
            # Pre-scaled so that |g_i - g_j|² is the exponent |f_i - f_j|² / 2σβ².
            g = feats.to(dtype) * (1.0 / (math.sqrt(2.0) * params.appearance_sigma_feat))
            self.feats_p = _pad(g, pads)
        per_map = math.prod(self.shape) * torch.finfo(dtype).bits // 8
        caching = len(offsets) * per_map <= params.max_cache_mb * 2**20
        raw: list[torch.Tensor] = []
        if params.normalize_kernels:
            vp = _pad(valid.to(dtype).unsqueeze(0), pads)[0]
            n_smooth = torch.ones(self.shape, dtype=dtype, device=valid.device)
            n_app = torch.ones_like(n_smooth) if self.use_app else None
            for k, (off, _) in enumerate(offsets):
                v_off = _shifted(vp, pads, off, self.whole)
                n_smooth.add_(v_off, alpha=self.smooth[k])
                if n_app is not None:
                    app = self._app(k, self.whole)
                    n_app.addcmul_(app, v_off)
                    if caching:
                        raw.append(app)
            self.smooth_scale = n_smooth.reciprocal_().mul_(w2)
            if n_app is not None:
                self.app_scale = n_app.reciprocal_().mul_(w1)
        self.cache: list[torch.Tensor | float] | None = None
        if caching:
            self.cache = [self._weight(k, self.whole, raw[k] if raw else None) for k in range(len(offsets))]

    def _app(self, k: int, region: Region) -> torch.Tensor:
        """Unnormalised appearance kernel ``exp(-Δx²/2σα² - Δf²/2σβ²)`` for offset ``k``."""
        here = _shifted(self.feats_p, self.pads, (0,) * len(self.shape), region)
        there = _shifted(self.feats_p, self.pads, self.offsets[k][0], region)
        dist = (here - there).square_().sum(0).clamp_max_(_MAX_EXPONENT)
        return dist.neg_().exp_().mul_(self.app_pos[k])

    def _weight(self, k: int, region: Region, app: torch.Tensor | None = None) -> torch.Tensor | float:
        """Combined message weight for offset ``k`` over region: a map, or a constant."""
        scale = self.smooth_scale
        w = scale[region] * self.smooth[k] if isinstance(scale, torch.Tensor) else scale * self.smooth[k]
        if not self.use_app:
            return w
        app = self._app(k, region) if app is None else app
        scale = self.app_scale
        app.mul_(scale[region] if isinstance(scale, torch.Tensor) else scale)
        return app.add_(w)

    def weights(self, region: Region) -> Iterator[tuple[tuple[int, ...], torch.Tensor | float]]:
        """(offset, weight over region) for every window offset, in a fixed order."""
        for k, (off, _) in enumerate(self.offsets):
            if self.cache is None:
                yield off, self._weight(k, region)
            else:
                w = self.cache[k]
                yield off, (w[region] if isinstance(w, torch.Tensor) else w)


def _compute_dtype(probs: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (half, bfloat16, float32) computes in float32."""
    return torch.float64 if probs.dtype == torch.float64 else torch.float32


def _send_messages(msg: torch.Tensor, q_p: torch.Tensor, kernels: _Kernels, chunks: list[Region]) -> None:
    """One sweep: ``m_i = Σ_d W_d(i) Q_{i+d}`` over every window offset into ``msg``, chunk by chunk.

    ``q_p`` is the masked Q with a zero border of the window radius (a hard edge).
    """
    for region in chunks:
        acc = msg[(slice(None), *region)]
        acc.zero_()
        for off, w in kernels.weights(region):
            sent = _shifted(q_p, kernels.pads, off, region)
            if isinstance(w, float):
                acc.add_(sent, alpha=w)
            else:
                acc.addcmul_(w, sent)


@torch.no_grad()
def local_crf(
    probs: torch.Tensor | np.ndarray,
    image: torch.Tensor | np.ndarray | None,
    valid: torch.Tensor | np.ndarray | None,
    params: CRFParams | None = None,
    spacing: Spacing = None,
) -> torch.Tensor:
    """Refine class probabilities with the windowed mean-field CRF (2D or 3D, any device).

    probs: ``(C, *spatial)`` class probabilities (need not be normalised; floored at
    ``params.eps``). image: ``(B, *spatial)``, the appearance bands are picked and scaled per
    ``params``; None disables the appearance kernel. valid: bool ``(*spatial)`` or None (all
    valid). spacing: pixel/voxel spacing per spatial axis (None: isotropic).

    Returns refined probabilities, same shape, on probs' device, float32 (float64 if probs is).
    Invalid pixels keep their input. Locality: the output at a pixel depends only on inputs
    within ``params.reach(ndim, spacing)`` of it, and beyond the array edge nothing is read —
    refining ``block + reach`` (clipped to the scene) and cropping the block equals refining
    the whole scene and cropping, to float rounding.
    """
    params = params or CRFParams()
    p, img, v = prepare_inputs(probs, image, valid, params.bands)
    ndim = p.ndim - 1
    dtype = _compute_dtype(p)
    shape = tuple(p.shape[1:])
    num_classes = p.shape[0]
    offsets = window_offsets(params, ndim, spacing)
    pads = params.window_radii(ndim, spacing)
    p = p.to(dtype)

    # Unary: -log p, sanitised (uniform) where invalid so no NaN/inf can leak through the masks.
    zero = torch.zeros((), dtype=dtype, device=p.device)
    logp = torch.where(v, p.clamp_min(params.eps).log(), zero)
    q = torch.softmax(logp, dim=0)
    if params.iterations == 0 or not offsets:
        return torch.where(v, q, p)

    feats = appearance_features(img, v, params) if img is not None else None
    kernels = _Kernels(feats, v, params, offsets, pads, dtype)
    mu = params.compatibility_matrix(num_classes)
    potts = np.array_equal(mu, 1.0 - np.eye(num_classes))
    mu_t = torch.as_tensor(mu, dtype=dtype, device=p.device)
    vmask = v.to(dtype)
    # Cache-sized regions pay off on CPU; a GPU prefers few large kernels. Same values either way.
    chunks = (
        _chunks(shape, num_classes, torch.finfo(dtype).bits // 8)
        if p.device.type == "cpu"
        else [kernels.whole]
    )
    # Zero border = hard edge; the interior is rewritten with the masked Q every sweep.
    q_p = torch.zeros((num_classes, *(n + 2 * r for n, r in zip(shape, pads))), dtype=dtype, device=p.device)
    interior = _shifted(q_p, pads, (0,) * ndim, kernels.whole)
    msg = torch.empty_like(q)

    for _ in range(params.iterations):
        torch.mul(q, vmask, out=interior)  # invalid pixels send nothing
        _send_messages(msg, q_p, kernels, chunks)
        if potts:
            # Σ_{l'≠l} m(l') = Σ m - m(l); the per-pixel constant Σ m cancels in the softmax.
            logits = logp + msg
        else:
            logits = logp - torch.tensordot(mu_t, msg, dims=([1], [0]))
        q = torch.softmax(logits, dim=0)
    return torch.where(v, q, p)
