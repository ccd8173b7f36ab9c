"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) read with nibabel, slab by slab.

The array is read through nibabel's array proxy, never whole: ``.nii`` files are
sliced in place; ``.nii.gz`` is a gzip stream, so slabs are read in file order
(the last axis, ``k``, varies slowest) and each seek only moves forward. Scaling
(``scl_slope`` / ``scl_inter``) is applied by nibabel; a scaled volume is stored
as float32.

Channels: a 4D file ``(i, j, k, c)`` is read as ``c`` bands (a multi-modal
scan); a 5D file ``(i, j, k, 1, c)`` (NIfTI's vector layout) likewise. Anything
else that is not 3D is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import InputError
from pipeline.inputs.ingest import content_id
from pipeline.inputs.volume import Slab, VolumeSource
from pipeline.inputs.volume_geometry import VolumeGeometry, reverse_axes_affine

if TYPE_CHECKING:
    import nibabel as nib

NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_ERRORS = (EOFError, OSError, ValueError, zlib.error)

# Header fields that fix where voxels are; copied verbatim into NIfTI outputs.
GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def is_nifti(path: Path) -> bool:
    """Whether the name says NIfTI."""
    name = path.name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def header_geometry(header: nib.Nifti1Header) -> dict:
    """The header's geometry fields as JSON (for outputs to repeat exactly)."""
    out = {}
    for key in GEOMETRY_FIELDS:
        value = np.asarray(header[key])
        out[key] = value.tolist()
    out["pixdim"] = np.asarray(header["pixdim"])[:4].tolist()
    return out


def _load(path: Path) -> nib.Nifti1Image:
    import nibabel as nib  # here, not at the top: a raster run never loads it
    from nibabel.filebasedimages import ImageFileError

    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: is a folder, not NIfTI")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        img = nib.load(str(path), keep_file_open=True)  # one gzip stream, forward seeks only
    except (ImageFileError, *READ_ERRORS) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_nifti(path: str | Path) -> VolumeSource:
    """Describe a NIfTI file as a volume source (header only; no voxels read)."""
    path = Path(path)
    img = _load(path)
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: has a zero-sized axis (shape {shape})")
    if len(shape) == 3:
        bands, layout = 1, "3d"
    elif len(shape) == 4:
        bands, layout = shape[3], "4d"
    elif len(shape) == 5 and shape[3] == 1:
        bands, layout = shape[4], "5d"
    else:
        raise InputError(
            f"{path}: a {len(shape)}D NIfTI (shape {shape}) is not a volume; expected (i, j, k) "
            "or (i, j, k, channels)"
        )
    raw = img.get_data_dtype()
    if raw.fields is not None or raw.kind == "c":
        raise InputError(f"{path}: unsupported data type {raw} (supported: scalar integer or float voxels)")
    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = not (slope in (1.0, None) and inter in (0.0, None)) and np.isfinite(slope)
    dtype = np.dtype(np.float32) if scaled else raw.newbyteorder("=")
    ni, nj, nk = shape[:3]
    geometry = VolumeGeometry(
        affine=reverse_axes_affine(img.affine),
        source_format="nifti",
        slice_axis=0,
        nifti_header=header_geometry(img.header),
    )

    def slabs(thickness: int) -> Iterator[Slab]:
        for band in range(bands):
            for k0 in range(0, nk, thickness):
                k1 = min(nk, k0 + thickness)
                index = (slice(None), slice(None), slice(k0, k1))
                if layout == "4d":
                    index = (*index, band)
                elif layout == "5d":
                    index = (*index, 0, band)
                try:
                    block = np.asarray(img.dataobj[index])
                except READ_ERRORS as exc:
                    raise InputError(
                        f"{path}: cannot read slices {k0}–{k1} (truncated or corrupt file: {_reason(exc)})"
                    ) from None
                # (i, j, k') → store order (k', j, i)
                yield Slab(k0, k1, block.transpose(2, 1, 0), band)

    return VolumeSource(
        path=path,
        shape=(nk, nj, ni),
        num_bands=bands,
        dtype=dtype,
        geometry=geometry,
        source_id=content_id(path),
        slabs=slabs,
        has_mask=dtype.kind == "f",
    )
