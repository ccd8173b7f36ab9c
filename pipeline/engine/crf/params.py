"""CRF parameters shared by both CRFs: :class:`CRFParams`, its defaults, and the local window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
