"""Which reader and which writer: the one place that looks at input and output names.

Inputs: a ``.nii`` / ``.nii.gz`` file (NIfTI), a folder of DICOM slices, a
``.zarr`` folder with NGFF metadata (OME-Zarr), a TIFF with ``--spacing`` (a
TIFF stack; a multi-page TIFF without it is refused with a hint), anything else
GDAL reads (a 2D raster). Outputs: ``.nii`` / ``.nii.gz`` (NIfTI, volumes),
``.zarr`` (OME-Zarr, volumes and rasters), otherwise a COG (rasters).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.inputs.dicom import is_dicom_folder, open_dicom_series
from pipeline.inputs.ingest import ingest_raster
from pipeline.inputs.nifti import is_nifti, open_nifti
from pipeline.inputs.ome_zarr import is_ome_zarr, open_ome_zarr
from pipeline.inputs.raster import RasterInfo, inspect_raster
from pipeline.inputs.tiff_stack import is_tiff, open_tiff_stack, stack_depth
from pipeline.inputs.volume import VolumeSource, ingest_volume
from pipeline.stores.scene import SceneStore

OUTPUT_FORMATS = ("cog", "nifti", "ome_zarr")


@dataclass
class InputDescription:
    """What an input is, read from its headers before any voxel is copied."""

    path: Path
    kind: str
    """``raster``, ``nifti``, ``dicom``, ``tiff_stack`` or ``ome_zarr``."""
    num_bands: int
    spatial_dims: int
    raster: RasterInfo | None = None
    volume: VolumeSource | None = None


def describe_input(path: str | os.PathLike[str], spacing: Sequence[float] | None = None) -> InputDescription:
    """Pick the reader for ``path`` and read its header; bad input raises :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
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


def ingest_input(description: InputDescription, store_path: str | os.PathLike[str], chunk: int) -> SceneStore:
    """Copy the described input into the scene store (or reuse one with the same content)."""
    if description.volume is not None:
        return ingest_volume(description.volume, store_path, chunk)
    return ingest_raster(description.path, store_path, chunk=chunk)


def output_format(path: Path, spatial_dims: int) -> str:
    """The writer for an output name, checked against the scene's dimensionality."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        fmt = "nifti"
    elif name.endswith(".zarr"):
        fmt = "ome_zarr"
    elif name.endswith((".tif", ".tiff")) or spatial_dims == 2:
        fmt = "cog"
    else:
        raise InputError(f"{path}: unknown output format for a volume (use .nii.gz, .nii or .zarr)")
    if fmt == "cog" and spatial_dims != 2:
        raise InputError(f"{path}: a volume cannot be written as a GeoTIFF (use .nii.gz, .nii or .zarr)")
    if fmt == "nifti" and spatial_dims != 3:
        raise InputError(f"{path}: a 2D raster cannot be written as NIfTI (use .tif or .zarr)")
    return fmt


def export_volume_outputs(
    store_path: Path,
    scene: SceneStore,
    output: Path,
    probabilities: Path | None,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
) -> tuple[Path, Path | None]:
    """Write labels (and probabilities) as NIfTI or OME-Zarr, each by its own name."""
    from pipeline.exporters.nifti import export_labels_nifti, export_probabilities_nifti
    from pipeline.exporters.ome_zarr import export_ome_zarr, export_probabilities_ome_zarr

    attrs: Mapping[str, Any] = scene.attrs
    dims = len(scene.spatial_shape)
    if output_format(output, dims) == "nifti":
        out = export_labels_nifti(store_path, output, attrs)
    else:
        out = export_ome_zarr(store_path, scene.path, output, class_names, colors)
    probs = None
    if probabilities is not None:
        if output_format(probabilities, dims) == "nifti":
            probs = export_probabilities_nifti(store_path, probabilities, attrs)
        else:
            probs = export_probabilities_ome_zarr(store_path, scene.path, probabilities, class_names)
    return out, probs
