"""Where a volume's voxels are: the affine from store index to world millimetres.

Every volume reader puts the spatial axes into the scene store in the order
``(z, y, x)`` — slowest-varying first, slices first — and records one 4×4
affine that maps a store index ``(z, y, x, 1)`` to RAS+ world coordinates in
millimetres (the NIfTI convention; DICOM's LPS is converted). Spacing, origin
and direction are derived from it and stored beside it for readers of the
attributes. A NIfTI file's array is ``(i, j, k)`` with ``i`` fastest, so its
store order is the reverse and its affine the input's with the columns
permuted; writing NIfTI reverses both again, which gives the input's affine
back exactly (a permutation loses no bits).

NIfTI inputs also keep their header's geometry fields (qform/sform codes and
parameters, ``pixdim``, units) so a NIfTI output carries them verbatim and a
viewer overlays it without resampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNIT_TO_MM = {
    "millimeter": 1.0,
    "micrometer": 1e-3,
    "nanometer": 1e-6,
    "centimeter": 10.0,
    "meter": 1e3,
}


def reverse_axes_affine(affine: np.ndarray) -> np.ndarray:
    """The affine of the same voxels indexed with the three spatial axes reversed."""
    out = np.array(affine, dtype=np.float64)
    out[:, :3] = out[:, 2::-1]
    return out


@dataclass(frozen=True)
class VolumeGeometry:
    """The store-order affine plus format-specific extras that outputs reproduce."""

    affine: np.ndarray
    """4×4: store index ``(z, y, x)`` → RAS+ millimetres."""
    source_format: str
    slice_axis: int = 0
    """The store axis the source was acquired / stored along (default for slice-by-slice models)."""
    nifti_header: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"a volume affine must be a finite 4×4 matrix, got {affine.tolist()}")
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the store axes (z, y, x), in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (mm) of voxel (0, 0, 0)'s centre."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> list[list[float]]:
        """3×3 matrix whose columns are the unit world directions of the store axes."""
        spacing = np.asarray(self.spacing)
        return (self.affine[:3, :3] / np.where(spacing > 0, spacing, 1.0)).tolist()

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel (|det| of the linear part), in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def attrs(self) -> dict[str, Any]:
        """Scene-store attributes (JSON)."""
        out: dict[str, Any] = {
            "kind": "volume",
            "spatial_dims": 3,
            "affine": self.affine.tolist(),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction,
            "source_format": self.source_format,
            "slice_axis": int(self.slice_axis),
            **dict(self.extra),
        }
        if self.nifti_header is not None:
            out["nifti_header"] = dict(self.nifti_header)
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> VolumeGeometry:
        """Rebuild from scene-store attributes written by :meth:`attrs`."""
        return cls(
            affine=np.asarray(attrs["affine"], dtype=np.float64),
            source_format=str(attrs.get("source_format", "unknown")),
            slice_axis=int(attrs.get("slice_axis", 0)),
            nifti_header=attrs.get("nifti_header"),
        )


def is_volume(attrs: Mapping[str, Any]) -> bool:
    """Whether scene attributes describe a volume (rather than a georeferenced raster)."""
    return attrs.get("kind") == "volume"


def scale_translation_affine(spacing: Sequence[float], origin: Sequence[float] | None = None) -> np.ndarray:
    """An axis-aligned affine for store axes (z, y, x): diagonal spacing plus translation.

    Store axis z maps to world z, y to y, x to x (so the world columns are reversed
    relative to the store order, as for a NIfTI written from this volume).
    """
    sz, sy, sx = (float(s) for s in spacing)
    oz, oy, ox = (float(o) for o in (origin if origin is not None else (0.0, 0.0, 0.0)))
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = sx, sy, sz
    affine[:3, 3] = (ox, oy, oz)
    affine[3, 3] = 1.0
    return affine
