"""OME-Zarr (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) images read with zarr directly.

The full-resolution level of the first multiscale is read a slab of ``z`` at a
time. Axes: an optional time axis of length 1, an optional channel axis (its
entries become bands), and three space axes. The voxel size and origin are the
level's ``scale`` and ``translation`` (combined with the multiscale-wide ones),
converted to millimetres from the axes' units. NGFF has no rotations, so the
affine is axis-aligned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.inputs.volume import Slab, VolumeSource
from pipeline.inputs.volume_geometry import UNIT_TO_MM, VolumeGeometry, scale_translation_affine
from pipeline.stores.zarr_groups import open_group


def _ngff(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The NGFF metadata block: under ``ome`` in 0.5, at the top level in 0.4."""
    return attrs.get("ome", attrs)


def is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is a Zarr group with NGFF multiscales metadata."""
    if not path.is_dir() or not ((path / "zarr.json").exists() or (path / ".zattrs").exists()):
        return False
    try:
        return "multiscales" in _ngff(open_group(path, mode="r").attrs.asdict())
    except (ValueError, FileNotFoundError, KeyError, TypeError):
        return False


def _transforms(items: list[Mapping[str, Any]] | None, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for t in items or []:
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], dtype=float)
        elif t.get("type") == "translation":
            translation = translation + np.asarray(t["translation"], dtype=float)
    return scale, translation


def _space_and_channel_axes(
    path: Path, axes: list[Mapping[str, Any]], shape: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """The three space axes and the channel axis (an empty list or one) of the array; others are refused."""
    names = [a["name"] for a in axes]
    types = [a.get("type", "space" if a["name"] in "zyx" else "channel") for a in axes]
    if len(shape) != len(axes):
        raise InputError(f"{path}: {len(axes)} axes in the metadata but the array has shape {shape}")
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: has a zero-sized axis (shape {shape})")
    space = [i for i, t in enumerate(types) if t == "space"]
    channel = [i for i, t in enumerate(types) if t == "channel"]
    time_axes = [i for i, t in enumerate(types) if t == "time"]
    if len(space) != 3 or len(channel) > 1 or any(shape[i] != 1 for i in time_axes):
        raise InputError(
            f"{path}: axes {names} with shape {shape}: expected three space axes, "
            "at most one channel axis and no time points beyond one"
        )
    return space, channel


def _spacing_and_origin(
    multiscale: Mapping[str, Any], level: Mapping[str, Any], axes: list[Mapping[str, Any]], space: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size and origin in mm along the space axes: the level's transforms, then the multiscale's."""
    ndim = len(axes)
    scale, translation = _transforms(level.get("coordinateTransformations"), ndim)
    s2, t2 = _transforms(multiscale.get("coordinateTransformations"), ndim)
    scale, translation = scale * s2, translation * s2 + t2
    to_mm = np.array([UNIT_TO_MM.get(axes[i].get("unit", "millimeter"), 1.0) for i in space])
    return scale[space] * to_mm, translation[space] * to_mm


def _directory_id(path: Path) -> str:
    """Identity of a Zarr folder: every file's relative name, size and modification time."""
    digest = hashlib.blake2b(digest_size=16)
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def open_ome_zarr(path: str | Path) -> VolumeSource:
    """Describe the full-resolution level of an OME-Zarr image as a volume source."""
    path = Path(path)
    try:
        group = open_group(path, mode="r")
        meta = _ngff(group.attrs.asdict())
        ms = meta["multiscales"][0]
        axes = [a if isinstance(a, dict) else {"name": a} for a in ms["axes"]]
        level = ms["datasets"][0]
        array = group[level["path"]]
    except (ValueError, FileNotFoundError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: not an OME-Zarr image ({type(exc).__name__}: {exc})") from None
    names = [a["name"] for a in axes]
    shape = tuple(int(s) for s in array.shape)
    space, channel = _space_and_channel_axes(path, axes, shape)
    spacing, origin = _spacing_and_origin(ms, level, axes, space)
    bands = shape[channel[0]] if channel else 1
    depth, rows, cols = (shape[i] for i in space)
    dtype = np.dtype(array.dtype)

    def slabs(thickness: int) -> Iterator[Slab]:
        for z0 in range(0, depth, thickness):
            z1 = min(depth, z0 + thickness)
            index: list[Any] = [0] * len(shape)
            for i in space:
                index[i] = slice(None)
            index[space[0]] = slice(z0, z1)
            if channel:
                index[channel[0]] = slice(None)
            data = np.asarray(array[tuple(index)])
            kept = [i for i in range(len(shape)) if not isinstance(index[i], int)]
            order = ([kept.index(channel[0])] if channel else []) + [kept.index(i) for i in space]
            data = data.transpose(order)
            yield Slab(z0, z1, data if channel else data[None])

    return VolumeSource(
        path=path,
        shape=(depth, rows, cols),
        num_bands=bands,
        dtype=dtype,
        geometry=VolumeGeometry(
            affine=scale_translation_affine(spacing, origin), source_format="ome_zarr", slice_axis=0
        ),
        source_id=_directory_id(path),
        slabs=slabs,
        has_mask=dtype.kind == "f",
        attrs={"ngff_axes": names},
    )
