"""Export: output store → NIfTI label map (and probabilities) aligned with the input.

The label map has the input's shape and affine: the store's ``(z, y, x)`` axes are
reversed back to NIfTI's ``(i, j, k)`` and the affine with them. A NIfTI input's
own header geometry (qform/sform codes and parameters, ``pixdim``, units) is
copied verbatim, so ``img.affine`` of the output equals the input's bit for bit
and a viewer overlays it without resampling.

Voxels are streamed: the header is written, then one ``k`` slab after another in
NIfTI's Fortran order (``k`` varies slowest), read chunk-aligned from the store;
the file is written under a temporary name beside the target and renamed.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import zarr

from pipeline.exporters.cog import _temporary_sibling
from pipeline.inputs.volume_geometry import VolumeGeometry, reverse_axes_affine
from pipeline.stores.zarr_groups import open_group


def nifti_header(
    geometry: VolumeGeometry, shape_ijk: Sequence[int], dtype: np.dtype, description: str = ""
) -> nib.Nifti1Header:
    """A header for an ``(i, j, k[, c])`` array placed like the scene."""
    header = nib.Nifti1Header()
    header.set_data_shape(tuple(int(s) for s in shape_ijk))
    header.set_data_dtype(dtype)
    affine = reverse_axes_affine(geometry.affine)
    source = geometry.nifti_header
    if source is not None:
        for key, value in source.items():
            if key == "pixdim":
                pixdim = np.asarray(header["pixdim"]).copy()
                pixdim[: len(value)] = value
                header["pixdim"] = pixdim
            else:
                header[key] = value
    else:
        header.set_sform(affine, code="scanner")
        header.set_qform(affine, code="scanner")
        header.set_xyzt_units("mm")
    header["descrip"] = description[:79].encode()
    header.set_slope_inter(1.0, 0.0)
    return header


def _open(path: Path, gz: bool) -> BinaryIO:
    return gzip.open(path, "wb", compresslevel=6) if gz else open(path, "wb")


def _write_header(fh: BinaryIO, header: nib.Nifti1Header) -> None:
    header.set_data_offset(352)
    header.write_to(fh)
    fh.write(b"\0" * (352 - fh.tell()))  # no extensions: the 4-byte flag plus padding


def _stream(fh: BinaryIO, array: zarr.Array, dtype: np.dtype, band: int | None, nodata: Any) -> None:
    """Append ``array`` (store order, optionally one band) in NIfTI Fortran order, k slab by k slab."""
    spatial = array.shape[-3:]
    step = array.chunks[-3]
    for z0 in range(0, spatial[0], step):
        z1 = min(spatial[0], z0 + step)
        index = (slice(z0, z1), slice(None), slice(None))
        slab = np.asarray(array[index if band is None else (band, *index)])
        if nodata is not None:
            slab = np.where(np.isnan(slab), nodata, slab)
        # store (k, j, i) C-order bytes are exactly (i, j, k) Fortran-order bytes
        fh.write(np.ascontiguousarray(slab, dtype=dtype).tobytes(order="C"))


def _write(output: Path, header: nib.Nifti1Header, body: Any) -> Path:
    gz = output.name.lower().endswith(".gz")
    with _temporary_sibling(output, ".nii.gz" if gz else ".nii") as tmp:
        with _open(tmp, gz) as fh:
            _write_header(fh, header)
            body(fh)
        os.replace(tmp, output)
    return output


def export_labels_nifti(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    scene_attrs: Mapping[str, Any],
    description: str = "gigaseg labels",
) -> Path:
    """Write the store's labels as a NIfTI with the scene's shape and affine."""
    output = Path(output)
    group = open_group(store_path, mode="r")
    labels = group["labels"]
    geometry = VolumeGeometry.from_attrs(scene_attrs)
    dtype = np.dtype(labels.dtype)
    header = nifti_header(geometry, labels.shape[::-1], dtype, description)
    header["cal_min"], header["cal_max"] = 0, int(group.attrs["num_classes"]) - 1
    header.set_intent("label", name="gigaseg")
    return _write(output, header, lambda fh: _stream(fh, labels, dtype, None, None))


def export_probabilities_nifti(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    scene_attrs: Mapping[str, Any],
) -> Path:
    """Write per-class probabilities as a 4D float32 NIfTI ``(i, j, k, class)``, NaN where nodata."""
    output = Path(output)
    group = open_group(store_path, mode="r")
    probs = group["probabilities"]
    geometry = VolumeGeometry.from_attrs(scene_attrs)
    classes = probs.shape[0]
    header = nifti_header(geometry, (*probs.shape[:0:-1], classes), np.dtype(np.float32), "gigaseg probs")

    def body(fh: BinaryIO) -> None:
        for c in range(classes):  # the class axis varies slowest in Fortran order
            _stream(fh, probs, np.dtype(np.float32), c, None)

    return _write(output, header, body)
