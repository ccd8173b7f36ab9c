"""Which reader: the one place that looks at input names.

A ``.nii`` / ``.nii.gz`` file (NIfTI), a folder of DICOM slices, a
``.zarr`` folder with NGFF metadata (OME-Zarr), a TIFF with ``--spacing`` (a
TIFF stack; a multi-page TIFF without it is refused with a hint), anything else
GDAL reads (a 2D raster). Outputs are named in :mod:`pipeline.exporters.formats`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.inputs.band_stack import BandStack, Scene, check_scene_readable, scene_location, stack_vrt
from pipeline.inputs.dicom import is_dicom_folder, open_dicom_series
from pipeline.inputs.ingest import ingest_raster
from pipeline.inputs.nifti import is_nifti, open_nifti
from pipeline.inputs.ome_zarr import is_ome_zarr, open_ome_zarr
from pipeline.inputs.raster import RasterInfo, inspect_raster
from pipeline.inputs.tiff_stack import is_tiff, open_tiff_stack, stack_depth
from pipeline.inputs.volume import VolumeSource, ingest_volume
from pipeline.stores.location import ObjectLocation
from pipeline.stores.scene import SceneStore
from pipeline.stores.transfer import local_copy


@dataclass
class InputDescription:
    """What an input is, read from its headers before any voxel is copied."""

    path: Path | ObjectLocation
    kind: str
    """``raster``, ``nifti``, ``dicom``, ``tiff_stack`` or ``ome_zarr``."""
    num_bands: int
    spatial_dims: int
    raster: RasterInfo | None = None
    volume: VolumeSource | None = None


def describe_input(
    path: str | os.PathLike[str] | Scene, spacing: Sequence[float] | None = None
) -> InputDescription:
    """Pick the reader for ``path`` and read its header; bad input raises :class:`InputError`.

    A raster at a URL is read in place by GDAL; a volume at a URL (NIfTI, DICOM
    folder, TIFF stack, OME-Zarr) is first copied to a private local folder, since
    its readers need files. A band stack (``a.tif,b.tif,…``) is read as one raster
    through its VRT (:mod:`pipeline.inputs.band_stack`).
    """
    where = scene_location(path)
    check_scene_readable(where)
    if isinstance(where, BandStack):
        if spacing is not None:
            raise InputError(f"--spacing applies to TIFF stacks only; {where} is a band stack")
        info = inspect_raster(stack_vrt(where))
        return InputDescription(info.path, "raster", len(info.bands), 2, raster=info)
    if isinstance(where, ObjectLocation):
        if not _is_volume_name(where, spacing) and not where.is_dir():
            info = inspect_raster(where)
            return InputDescription(where, "raster", len(info.bands), 2, raster=info)
        where = local_copy(where)
    return _describe_local(where, spacing)


def read_in_place(where: Path | ObjectLocation, spacing: Sequence[float] | None = None) -> bool:
    """Whether :func:`describe_input` reads ``where`` in place: a local input, or a raster file at a URL.

    Volumes at a URL (NIfTI, OME-Zarr, TIFF stacks, DICOM folders) are copied first.
    """
    if not isinstance(where, ObjectLocation):
        return True
    return not _is_volume_name(where, spacing) and not where.is_dir()


def _is_volume_name(where: ObjectLocation, spacing: Sequence[float] | None) -> bool:
    return is_nifti(where) or where.suffix.lower() == ".zarr" or (is_tiff(where) and spacing is not None)


def _describe_local(path: Path, spacing: Sequence[float] | None) -> InputDescription:
    """The reader for a local input."""
    volume: VolumeSource | None = None
    if path.is_dir():
        if is_ome_zarr(path):
            volume, kind = open_ome_zarr(path), "ome_zarr"
        elif path.suffix.lower() == ".zarr":
            raise InputError(f"{path}: Zarr folder without OME-Zarr (NGFF) multiscales metadata")
        elif is_dicom_folder(path):
            volume, kind = open_dicom_series(path), "dicom"
        else:
            raise InputError(f"{path}: is a folder without DICOM slices or OME-Zarr metadata")
    elif is_nifti(path):
        volume, kind = open_nifti(path), "nifti"
    elif is_tiff(path) and spacing is not None:
        volume, kind = open_tiff_stack(path, spacing), "tiff_stack"
    else:
        if spacing is not None:
            raise InputError(f"--spacing applies to TIFF stacks only; {path} is not a .tif/.tiff")
        if is_tiff(path) and (depth := stack_depth(path)):
            raise InputError(
                f"{path}: is a stack of {depth} TIFF pages; give --spacing Z,Y,X (mm) to read it as a volume"
            )
        info = inspect_raster(path)
        return InputDescription(path, "raster", len(info.bands), 2, raster=info)
    return InputDescription(path, kind, volume.num_bands, 3, volume=volume)


def ingest_input(
    description: InputDescription,
    store_path: str | os.PathLike[str],
    chunk: int,
    copy: bool = False,
    local_readers: bool = True,
) -> SceneStore:
    """The described input's scene store (or one with the same content already there).

    A tiled GeoTIFF / COG is read in place unless ``copy`` (or, for a local file, unless
    blocks may run on other machines: ``local_readers`` False); anything else is copied in.
    """
    if description.volume is not None:
        return ingest_volume(description.volume, store_path, chunk)
    return ingest_raster(
        description.path,
        store_path,
        chunk=chunk,
        copy=copy,
        local_readers=local_readers,
        info=description.raster,
    )
