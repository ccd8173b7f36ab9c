"""Multi-page TIFF stacks (EM, microscopy, exported slices) read with tifffile.

A stack carries no trustworthy physical geometry, so the voxel spacing comes
from the command line (``--spacing Z,Y,X`` in mm, or one number for isotropic
voxels); the origin is 0 and the axes are the identity. Pages are read a slab
at a time. Pages with samples (RGB) become bands.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from pipeline.errors import InputError
from pipeline.inputs.ingest import content_id
from pipeline.inputs.volume import Slab, VolumeSource
from pipeline.inputs.volume_geometry import VolumeGeometry, scale_translation_affine

TIFF_SUFFIXES = (".tif", ".tiff")
GEOTIFF_KEY_TAG = 34735


def is_tiff(path: Path) -> bool:
    """Whether the name says TIFF."""
    return path.suffix.lower() in TIFF_SUFFIXES


def stack_depth(path: Path) -> int:
    """Number of equally shaped, non-georeferenced full-resolution pages (0 if not a stack)."""
    try:
        with tifffile.TiffFile(str(path)) as tif:
            pages = tif.pages
            if len(pages) < 2 or GEOTIFF_KEY_TAG in pages[0].tags:
                return 0
            series = tif.series[0]
            return int(series.shape[0]) if len(series.shape) >= 3 else 0
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return 0


def parse_spacing(text: str | Sequence[float] | None) -> tuple[float, float, float] | None:
    """``"Z,Y,X"`` or one number (isotropic), in mm → (z, y, x); None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--spacing must be Z,Y,X or one number (mm), got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"--spacing must be three positive numbers Z,Y,X (mm), got {text!r}")
    return tuple(values)


def open_tiff_stack(path: str | Path, spacing: Sequence[float]) -> VolumeSource:
    """Describe a TIFF stack as a volume with the given (z, y, x) spacing in mm."""
    path = Path(path)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: not a TIFF stack tifffile can read ({exc})") from None
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: has a zero-sized axis (shape {shape})")
    if len(shape) == 3:
        bands = 1
    elif len(shape) == 4 and axes[-1] == "S":
        bands = shape[3]
    else:
        raise InputError(f"{path}: a TIFF of shape {shape} (axes {axes}) is not a stack of 2D pages")
    depth, rows, cols = shape[:3]

    def slabs(thickness: int) -> Iterator[Slab]:
        with tifffile.TiffFile(str(path)) as tif:
            for z0 in range(0, depth, thickness):
                z1 = min(depth, z0 + thickness)
                try:
                    data = tif.asarray(key=range(z0, z1), series=0)
                except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
                    raise InputError(
                        f"{path}: cannot read pages {z0}–{z1} (truncated or corrupt file: {exc})"
                    ) from None
                data = data.reshape(z1 - z0, rows, cols, bands)
                yield Slab(z0, z1, np.moveaxis(data, -1, 0))

    return VolumeSource(
        path=path,
        shape=(depth, rows, cols),
        num_bands=bands,
        dtype=dtype,
        geometry=VolumeGeometry(
            affine=scale_translation_affine(spacing), source_format="tiff_stack", slice_axis=0
        ),
        source_id=f"{content_id(path)}|spacing={list(spacing)}",
        slabs=slabs,
        has_mask=dtype.kind == "f",
        attrs={"spacing_from": "command line"},
    )
