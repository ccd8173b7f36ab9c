"""Export: output store → OME-Zarr (NGFF 0.5, Zarr v3) for napari-style viewers.

Layout of ``OUTPUT.zarr``::

    OUTPUT.zarr/            the input image, multiscale (c, z, y, x)
      0/ 1/ …               resolution levels (each axis halved by taking every 2nd voxel)
      labels/               {"labels": ["segmentation"]}
        segmentation/       multiscale label image (z, y, x) + ``image-label``
          0/ 1/ …           (colours and class names per label value)

Downsampling takes every second voxel, so a level's voxel ``0`` sits where level
0's does and only ``scale`` changes between levels (labels are never averaged).
NGFF has no rotations or flips: ``scale`` is the voxel spacing, ``translation``
the origin along each axis's nearest world axis, and the exact store affine is
kept under the ``gigaseg`` attribute. 2D rasters are written with axes (c, y, x).
Everything is written under a temporary name beside the target and renamed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.inputs.volume_geometry import VolumeGeometry, is_volume
from pipeline.stores.scene import COMPRESSORS, SceneStore
from pipeline.stores.zarr_groups import open_group

NGFF_VERSION = "0.5"
MAX_LEVELS = 5
SMALLEST_LEVEL = 64  # stop halving once the largest axis is at most this


def level_shapes(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial shapes of the pyramid levels (level 0 first)."""
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < MAX_LEVELS and max(shapes[-1]) > SMALLEST_LEVEL and min(shapes[-1]) >= 2:
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes


def _spatial_transform(attrs: Mapping[str, Any], ndim: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of level 0 along the spatial axes, in mm (volumes) or CRS units (rasters)."""
    if is_volume(attrs):
        geometry = VolumeGeometry.from_attrs(attrs)
        direction = np.asarray(geometry.direction)
        origin = np.asarray(geometry.origin)
        translation = [float(origin[int(np.argmax(np.abs(direction[:, a])))]) for a in range(3)]
        return list(geometry.spacing), translation
    t = attrs.get("transform")
    if t is not None and ndim == 2:  # (a, b, c, d, e, f): x = a·col + c, y = e·row + f
        return [abs(float(t[4])), abs(float(t[0]))], [float(t[5]), float(t[2])]
    return [1.0] * ndim, [0.0] * ndim


def _axes(spatial: int, channel: bool, unit: str | None) -> list[dict[str, str]]:
    axes = [{"name": "c", "type": "channel"}] if channel else []
    for name in "zyx"[-spatial:]:
        axes.append({"name": name, "type": "space", **({"unit": unit} if unit else {})})
    return axes


def _multiscale(name: str, shapes: list, scale: list, translation: list, channel: bool, unit: str | None):
    lead = [1.0] if channel else []
    datasets = []
    for level in range(len(shapes)):
        factor = [float(2**level)] * len(scale)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": lead + [s * f for s, f in zip(scale, factor)]},
                    {"type": "translation", "translation": [0.0] * len(lead) + list(translation)},
                ],
            }
        )
    return {"name": name, "axes": _axes(len(scale), channel, unit), "datasets": datasets}


def _write_pyramid(
    group: zarr.Group,
    first: Callable[[int, int], np.ndarray],
    lead: tuple[int, ...],
    dtype: np.dtype,
    source_chunks: Sequence[int],
    shapes: list,
    fill: Any,
) -> None:
    """Levels ``0 …`` of an array (``(*lead, *spatial)``), streamed slab by slab.

    ``first(a, b)``: the array's slices ``[a, b)`` along its first spatial axis (level 0
    is read from there; each further level from the one before it).
    """
    spatial_chunks = tuple(min(c, s) for c, s in zip(source_chunks, shapes[0]))
    names = (("c",) if lead else ()) + tuple("zyx"[-len(shapes[0]) :])
    previous: zarr.Array | None = None
    for level, shape in enumerate(shapes):
        chunks = tuple(min(c, s) for c, s in zip(spatial_chunks, shape))
        target = group.create_array(
            str(level),
            shape=(*lead, *shape),
            chunks=(*lead, *chunks),
            dtype=dtype,
            fill_value=fill,
            compressors=COMPRESSORS,
            dimension_names=names,
        )
        step = chunks[0]
        for a in range(0, shape[0], step):
            b = min(shape[0], a + step)
            if previous is None:
                data = first(a, b)
            else:
                data = previous[(*(slice(None),) * len(lead), slice(2 * a, 2 * b, 2))]
                data = data[(*(slice(None),) * (len(lead) + 1), *(slice(None, None, 2),) * (len(shape) - 1))]
            target[(*(slice(None),) * len(lead), slice(a, b))] = data
        previous = target


def _replace_dir(tmp: Path, output: Path) -> None:
    if output.exists():
        aside = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(output, aside)
        os.replace(tmp, output)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, output)


def export_ome_zarr(
    store_path: str | os.PathLike[str],
    scene_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    with_image: bool = True,
) -> Path:
    """Write the scene image (optional) and its label map as one OME-Zarr image with labels."""
    output = Path(output)
    out_group = open_group(store_path, mode="r")
    scene = SceneStore.open(scene_path)
    labels = out_group["labels"]
    attrs = dict(scene.attrs)
    shapes = level_shapes(labels.shape)
    scale, translation = _spatial_transform(attrs, labels.ndim)
    unit = "millimeter" if is_volume(attrs) else None
    extra = {"gigaseg": {k: attrs[k] for k in ("affine", "crs", "transform", "source") if k in attrs}}
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        root = open_group(tmp, mode="w", zarr_format=3)
        if with_image:
            rest = tuple((0, n) for n in scene.spatial_shape[1:])
            _write_pyramid(
                root,
                lambda a, b: scene.read(((a, b), *rest))[0],
                (scene.num_bands,),
                scene.dtype,
                scene.chunk_shape,
                shapes,
                fill=0,
            )
        root.update_attributes(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    **(
                        {"multiscales": [_multiscale("image", shapes, scale, translation, True, unit)]}
                        if with_image
                        else {}
                    ),
                },
                **extra,
            }
        )
        label_root = root.create_group("labels")
        label_root.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["segmentation"]}
        seg = label_root.create_group("segmentation")
        nodata = int(out_group.attrs["nodata"])
        _write_pyramid(seg, lambda a, b: labels[a:b], (), labels.dtype, labels.chunks, shapes, fill=nodata)
        seg.update_attributes(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    "multiscales": [_multiscale("segmentation", shapes, scale, translation, False, unit)],
                    "image-label": _image_label(class_names, colors, nodata, with_image),
                },
                **extra,
            }
        )
        _replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _image_label(
    class_names: Sequence[str], colors: Sequence[Sequence[int]], nodata: int, with_image: bool
) -> dict[str, Any]:
    """NGFF ``image-label`` metadata: a colour per class (nodata transparent), class names, the image."""
    return {
        "version": NGFF_VERSION,
        "colors": [{"label-value": i, "rgba": [*map(int, rgb[:3]), 255]} for i, rgb in enumerate(colors)]
        + [{"label-value": nodata, "rgba": [0, 0, 0, 0]}],
        "properties": [{"label-value": i, "class": n} for i, n in enumerate(class_names)],
        **({"source": {"image": "../../"}} if with_image else {}),
    }


def export_probabilities_ome_zarr(
    store_path: str | os.PathLike[str],
    scene_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    class_names: Sequence[str],
) -> Path:
    """Per-class probabilities as a multiscale OME-Zarr image with one channel per class."""
    output = Path(output)
    probs = open_group(store_path, mode="r")["probabilities"]
    attrs = open_group(scene_path, mode="r").attrs.asdict()
    shapes = level_shapes(probs.shape[1:])
    scale, translation = _spatial_transform(attrs, probs.ndim - 1)
    unit = "millimeter" if is_volume(attrs) else None
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        root = open_group(tmp, mode="w", zarr_format=3)
        _write_pyramid(
            root,
            lambda a, b: probs[:, a:b],
            probs.shape[:1],
            probs.dtype,
            probs.chunks[1:],
            shapes,
            fill=np.nan,
        )
        root.update_attributes(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    "multiscales": [_multiscale("probabilities", shapes, scale, translation, True, unit)],
                    "omero": {"channels": [{"label": n} for n in class_names]},
                }
            }
        )
        _replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
