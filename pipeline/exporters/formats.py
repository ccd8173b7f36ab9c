"""Which writer: the one place that looks at output names.

``.nii`` / ``.nii.gz`` (NIfTI, volumes), ``.zarr`` (OME-Zarr, volumes and
rasters), otherwise a COG (rasters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.stores.location import Where
from pipeline.stores.scene import SceneStore


@dataclass(frozen=True)
class ExportedOutputs:
    """The files an export wrote: the labels, and the probabilities when asked for."""

    labels: Path
    probabilities: Path | None = None


OUTPUT_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".zarr")
"""The output names a writer exists for (``.tif``/``.tiff``: COG; ``.nii``/``.nii.gz``: NIfTI; ``.zarr``)."""


def check_output_name(path: Where) -> None:
    """Refuse an output name no writer is for, before anything is written (not silently a GeoTIFF)."""
    if not path.name.lower().endswith(OUTPUT_SUFFIXES):
        raise InputError(
            f"{path}: unknown output format {path.suffix or '(no extension)'!r} "
            f"(use {', '.join(OUTPUT_SUFFIXES)})"
        )


def region_table_paths(output: Where) -> tuple[Where, Where]:
    """Where a tracked run's per-region table goes beside ``output`` (CSV, GeoJSON)."""
    stem = output.name.removesuffix(output.suffix)
    return output.with_name(f"{stem}.regions.csv"), output.with_name(f"{stem}.regions.geojson")


def companions(output: Where) -> list[Where]:
    """Files beside ``output`` that belong to the run that wrote it (sidecar, region tables)."""
    return [output.with_name(output.name + ".aux.xml"), *region_table_paths(output)]


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
) -> ExportedOutputs:
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
    return ExportedOutputs(out, probs)
