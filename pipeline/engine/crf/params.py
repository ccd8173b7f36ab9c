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

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_ITERATIONS",
    "CRFParams",
    "appearance_features",
    "band_stats",
    "dense_crf",
    "local_crf",
    "refine",
    "window_offsets",
]

Spacing = Sequence[float] | None

#: Feature scale the band normalisation maps ``[band_low, band_high]`` onto, so that σβ keeps
#: the meaning it has for 8-bit RGB (DeepLab's ranges) on any imagery.
FEATURE_RANGE = 255.0

#: Mean-field iterations when none are given, per mode (tuned on LoveDA, bench/RESULTS.md).
DEFAULT_ITERATIONS = {"local": 5, "dense": 10}


@dataclass(frozen=True)
class CRFParams:
    """Parameters of CRF refinement (both modes), with DeepLab-derived defaults.

    Spatial quantities (``radius``, ``smooth_sigma``, ``appearance_sigma_pos``) are in units of
    the pixel/voxel spacing. With ``normalize_spacing=True`` (default) the spacing is divided
    by its smallest entry, so they are in pixels of the finest axis whatever the physical unit
    (mm, µm, m): a 2D-tuned setting carries over to a volume of spacing (2.5, 0.7, 0.7) mm, with
    the through-plane distances 2.5/0.7 times longer. With ``normalize_spacing=False`` they are
    in the spacing's physical unit.
    """

    #: "local": windowed mean-field CRF (exact blockwise); "dense": DenseCRF via pydensecrf2.
    mode: Literal["local", "dense"] = "local"
    #: Mean-field iterations; None: the mode's default (:data:`DEFAULT_ITERATIONS`: 5 local,
    #: 10 dense). Each costs one window sweep and adds ``radius`` to the halo. Tuned on LoveDA
    #: (bench/RESULTS.md): DenseCRF gains from 10 (DeepLab's count), the local CRF does not.
    iterations: int | None = None
    #: Local CRF window radius (spacing units). Both kernels are truncated to this window (a ball
    #: or a box, ``window``). 4 covers the smoothness kernel to ~1.3σγ and keeps the halo
    #: (iterations × radius = 20 px) and cost modest (48 neighbours in 2D).
    radius: float = 4.0
    #: Window shape: "ball" (|offset| ≤ radius, isotropic and ~half the offsets of a box in 3D)
    #: or "box" (every axis within radius, the Convolutional-CRF square filter).
    window: Literal["ball", "box"] = "ball"
    # Kernel defaults: tuned on the LoveDA validation strips (``python -m bench.crf_bench --tune``,
    # bench/RESULTS.md; a staged grid from DeepLab's cross-validated values), where they raise
    # DenseCRF's mIoU and boundary F1 the most of the grid.
    #: w2, smoothness (Gaussian) kernel weight (DeepLab: 3; tuned 5, within noise of 3).
    smooth_weight: float = 5.0
    #: σγ, smoothness kernel width: DeepLab's cross-validated 3 (also best in the tuning grid).
    smooth_sigma: float = 3.0
    #: w1, appearance (bilateral) kernel weight; DeepLab's range [5, 10]: tuned to its top, 10.
    appearance_weight: float = 10.0
    #: σα, appearance kernel position width; DeepLab's range [50, 100], tuned 80 (20 and 50 did
    #: worse: the long reach is what lets DenseCRF fix whole regions). For the local CRF this
    #: is far wider than the window, i.e. the kernel is truncated to the window (Teichmann &
    #: Cipolla 2018): within it the position term is ≈ 1 and the window plays its part.
    appearance_sigma_pos: float = 80.0
    #: σβ, appearance kernel feature width in 0–255 feature units (Euclidean over the chosen
    #: bands). DeepLab's range [3, 10] is for raw 8-bit RGB; the bands here are stretched to
    #: 0–255 between their 2nd and 98th percentiles, which widens colour differences, and the
    #: tuning grid (3, 5, 10, 20) preferred 20 for both CRFs.
    appearance_sigma_feat: float = 20.0
    #: Label compatibility μ (C × C, penalty for labels l, l' at similar pixels); None = Potts.
    compatibility: tuple[tuple[float, ...], ...] | None = None
    #: Image bands used as appearance features (indices into the image's band axis); None = all.
    #: For non-RGB imagery choose the bands that show the boundaries (e.g. NIR, red, green).
    bands: tuple[int, ...] | None = None
    #: Per chosen band, the values mapped to 0 and to 255 (then clipped), e.g. 2nd/98th
    #: percentiles over the *scene* (see :func:`band_stats`) or a CT window. Must be scene-level
    #: constants — never computed per block — or the result would depend on block boundaries.
    #: None: the bands are taken as already on a 0–255 scale (8-bit imagery), unscaled.
    band_low: tuple[float, ...] | None = None
    band_high: tuple[float, ...] | None = None
    #: Local CRF: divide each kernel by ``1 + its row sum over the valid window`` (messages are
    #: kernel-weighted neighbour averages, so the weights mean what DeepLab's mean under
    #: DenseCRF's normalisation). False: raw kernel sums (Krähenbühl & Koltun's formula; then
    #: the weights must be far smaller, the sums grow with the window).
    normalize_kernels: bool = True
    #: Divide the spacing by its smallest entry (see the class docstring).
    normalize_spacing: bool = True
    #: Probability floor before the log of the unary.
    eps: float = 1e-8
    #: Local CRF: keep the per-offset kernel maps across iterations when they fit in this many
    #: MiB (faster), otherwise recompute them each iteration (memory ∝ block only). Either way
    #: the result is the same.
    max_cache_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.mode not in ("local", "dense"):
            raise ValueError(f"mode must be 'local' or 'dense', got {self.mode!r}")
        if self.iterations is None:
            object.__setattr__(self, "iterations", DEFAULT_ITERATIONS[self.mode])
        if self.window not in ("ball", "box"):
            raise ValueError(f"window must be 'ball' or 'box', got {self.window!r}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer, got {self.iterations}")
        object.__setattr__(self, "iterations", int(self.iterations))
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        for name in ("smooth_sigma", "appearance_sigma_pos", "appearance_sigma_feat", "eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("smooth_weight", "appearance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # Accept lists (YAML / JSON config) and store hashable tuples.
        if self.compatibility is not None:
            mu = tuple(tuple(float(v) for v in row) for row in self.compatibility)
            if any(len(row) != len(mu) for row in mu):
                raise ValueError("compatibility must be a square C x C matrix")
            object.__setattr__(self, "compatibility", mu)
        for name in ("bands", "band_low", "band_high"):
            value = getattr(self, name)
            if value is not None:
                cast = int if name == "bands" else float
                object.__setattr__(self, name, tuple(cast(v) for v in value))
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("give both band_low and band_high, or neither")
        if self.band_low is not None:
            if len(self.band_low) != len(self.band_high):
                raise ValueError("band_low and band_high must have the same length")
            if any(h <= lo for lo, h in zip(self.band_low, self.band_high)):
                raise ValueError("band_high must exceed band_low for every band")
            if self.bands is not None and len(self.bands) != len(self.band_low):
                raise ValueError("band_low/band_high need one entry per chosen band")

    def resolve_spacing(self, ndim: int, spacing: Spacing = None) -> tuple[float, ...]:
        """The spacing the kernels use: per-axis, positive, divided by its minimum if asked."""
        if ndim not in (2, 3):
            raise ValueError(f"CRF supports 2D and 3D inputs, got {ndim} spatial axes")
        if spacing is None:
            return (1.0,) * ndim
        s = tuple(float(v) for v in spacing)
        if len(s) != ndim or not all(math.isfinite(v) and v > 0 for v in s):
            raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
        if self.normalize_spacing:
            low = min(s)
            s = tuple(v / low for v in s)
        return s

    def window_radii(self, ndim: int = 2, spacing: Spacing = None) -> tuple[int, ...]:
        """Window half-width in pixels per axis: ``floor(radius / spacing[axis])``."""
        s = self.resolve_spacing(ndim, spacing)
        return tuple(math.floor(self.radius / v + 1e-9) for v in s)

    def reach(self, ndim: int = 2, spacing: Spacing = None) -> tuple[int, ...]:
        """Pixels per axis the refinement reads around a pixel: ``iterations × window radius``.

        The engine adds this to the block halo. For the local CRF it is exact: the output inside
        a block depends only on inputs within ``reach`` of it. For DenseCRF the same halo is
        used, as an approximation (its kernels are unbounded).
        """
        return tuple(self.iterations * r for r in self.window_radii(ndim, spacing))

    def compatibility_matrix(self, num_classes: int) -> np.ndarray:
        """μ as a float64 ``(C, C)`` array (Potts ``1 - I`` when none was given)."""
        if self.compatibility is None:
            return 1.0 - np.eye(num_classes)
        mu = np.asarray(self.compatibility, dtype=np.float64)
        if mu.shape != (num_classes, num_classes):
            raise ValueError(f"compatibility is {mu.shape}, data has {num_classes} classes")
        return mu


def window_offsets(
    params: CRFParams, ndim: int, spacing: Spacing = None
) -> list[tuple[tuple[int, ...], float]]:
    """The window's neighbour offsets (centre excluded) with their squared spacing distance."""
    s = params.resolve_spacing(ndim, spacing)
    radii = params.window_radii(ndim, spacing)
    limit = params.radius**2 * (1 + 1e-9)
    out = []
    for d in np.ndindex(*(2 * r + 1 for r in radii)):
        off = tuple(int(v - r) for v, r in zip(d, radii))
        if not any(off):
            continue
        dist2 = float(sum((o * v) ** 2 for o, v in zip(off, s)))
        if params.window == "ball" and dist2 > limit:
            continue
        out.append((off, dist2))
    return out


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


def _prepare(
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
    full = [slice(0, n) for n in shape]
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
        self.whole: Region = tuple(slice(0, n) for n in self.shape)
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
    p, img, v = _prepare(probs, image, valid, params.bands)
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
    regions = (
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
        for region in regions:
            acc = msg[(slice(None), *region)]
            acc.zero_()
            for off, w in kernels.weights(region):
                sent = _shifted(q_p, pads, off, region)
                if isinstance(w, float):
                    acc.add_(sent, alpha=w)
                else:
                    acc.addcmul_(w, sent)
        if potts:
            # Σ_{l'≠l} m(l') = Σ m - m(l); the per-pixel constant Σ m cancels in the softmax.
            logits = logp + msg
        else:
            logits = logp - torch.tensordot(mu_t, msg, dims=([1], [0]))
        q = torch.softmax(logits, dim=0)
    return torch.where(v, q, p)


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
    p, img, v = _prepare(probs, image, valid, params.bands)
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

    mu = params.compatibility_matrix(num_classes)

    def compat(weight: float) -> float | np.ndarray:
        # pydensecrf: a number w is Potts as a reward w·k̂Q for agreeing (the same as the
        # penalty w·(1 - I) up to a per-pixel constant); a matrix is a penalty applied to k̂Q.
        if params.compatibility is None:
            return float(weight)
        return np.ascontiguousarray(weight * mu, dtype=np.float32)

    def add(feats: list[np.ndarray], weight: float) -> None:
        if weight <= 0:
            return
        f = np.ascontiguousarray(np.stack([a.reshape(-1) for a in feats]), dtype=np.float32)
        crf.addPairwiseEnergy(
            f, compat=compat(weight), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC
        )

    add([yy / params.smooth_sigma, xx / params.smooth_sigma, *extra], params.smooth_weight)
    if img is not None:
        feats = appearance_features(img, v, params).to(torch.float32).cpu().numpy()
        if feats.shape[0] > 0:
            sa, sb = params.appearance_sigma_pos, params.appearance_sigma_feat
            add([yy / sa, xx / sa, *(feats / sb), *extra], params.appearance_weight)

    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    q = q.reshape(num_classes, height, width)
    out_np = np.where(vn[None], q, pn)
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(out_np).to(probs.device)
    return out_np


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
