"""DICOM series (a folder of single-frame slices) read with pydicom.

Headers are read first (no pixels): one series per folder (mixed series are
refused, naming them), one orientation and one in-plane geometry for every
slice, slices sorted by their position along the slice normal (file names and
order mean nothing), evenly spaced. Pixels are then read a slab of slices at a
time, with each slice's own ``RescaleSlope`` / ``RescaleIntercept`` applied (so
CT comes out in Hounsfield units). Integer results are stored as int32 (int16
when they fit), anything else as float32.

Geometry: DICOM positions are LPS millimetres; the store affine maps
``(slice, row, column)`` to RAS millimetres, so a NIfTI written from it
matches what ``dcm2niix`` style converters produce up to axis order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.inputs.volume import Slab, VolumeSource
from pipeline.inputs.volume_geometry import VolumeGeometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACING_TOLERANCE = 0.01  # relative deviation of slice gaps accepted as even


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    series: str
    position: np.ndarray
    orientation: tuple[float, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    frames: int


def _float(value: object, default: float) -> float:
    return default if value is None or value == "" else float(value)


def _read_header(path: Path) -> _SliceHeader | None:
    import pydicom  # here, not at the top: a raster run never loads it
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
        return None
    if "PixelData" not in ds and not hasattr(ds, "Rows"):
        return None
    missing = [
        k for k in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns") if k not in ds
    ]
    if missing:
        raise InputError(f"{path}: DICOM slice without {', '.join(missing)} (not part of a volume series)")
    return _SliceHeader(
        path=path,
        series=str(ds.get("SeriesInstanceUID", "")),
        position=np.asarray([float(v) for v in ds.ImagePositionPatient]),
        orientation=tuple(round(float(v), 5) for v in ds.ImageOrientationPatient),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))),
        slope=_float(ds.get("RescaleSlope"), 1.0),
        intercept=_float(ds.get("RescaleIntercept"), 0.0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def is_dicom_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (checks the preamble)."""
    if not path.is_dir():
        return False
    for f in sorted(path.iterdir()):
        if f.is_file() and f.stat().st_size > 132:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
    return False


def _one_series(folder: Path, headers: list[_SliceHeader]) -> list[_SliceHeader]:
    series: dict[str, list[_SliceHeader]] = {}
    for h in headers:
        series.setdefault(h.series, []).append(h)
    if len(series) > 1:
        parts = ", ".join(f"{uid or '(no UID)'}: {len(s)} slice(s)" for uid, s in sorted(series.items()))
        raise InputError(
            f"{folder}: holds {len(series)} DICOM series ({parts}); give a folder with one series"
        )
    (slices,) = series.values()
    first = slices[0]
    for h in slices:
        if h.frames > 1:
            raise InputError(f"{h.path}: multi-frame DICOM is not supported (give single-frame slices)")
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise InputError(
                f"{folder}: slices differ in size ({first.rows}×{first.columns} and {h.rows}×{h.columns})"
            )
        if not np.allclose(h.orientation, first.orientation, atol=1e-4):
            raise InputError(f"{folder}: slices have different orientations ({h.path.name})")
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise InputError(f"{folder}: slices have different pixel spacings ({h.path.name})")
    return slices


def _geometry(folder: Path, slices: list[_SliceHeader]) -> tuple[list[_SliceHeader], np.ndarray]:
    first = slices[0]
    row_dir = np.asarray(first.orientation[:3])  # direction of increasing column index
    col_dir = np.asarray(first.orientation[3:])  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    slices = sorted(slices, key=lambda h: float(h.position @ normal))
    depths = np.array([float(h.position @ normal) for h in slices])
    gaps = np.diff(depths)
    if len(slices) > 1:
        if np.any(gaps <= 1e-6):
            raise InputError(f"{folder}: two slices share one position (duplicate or mixed acquisitions)")
        if np.ptp(gaps) > SPACING_TOLERANCE * gaps.mean():
            raise InputError(
                f"{folder}: uneven slice spacing ({gaps.min():.3g}–{gaps.max():.3g} mm); resample it first"
            )
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    else:
        step = normal * 1.0
    dy, dx = first.pixel_spacing  # PixelSpacing = (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_dir * dy
    lps[:3, 2] = row_dir * dx
    lps[:3, 3] = slices[0].position  # the first slice along the normal, not the first file
    ras = np.eye(4)
    ras[:3, :] = LPS_TO_RAS @ lps[:3, :]
    return slices, ras


def _raw_pixels(h: _SliceHeader) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(h.path))
        raw = ds.pixel_array
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        AttributeError,
    ) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{h.path}: cannot read the pixels ({reason})") from None
    if raw.shape != (h.rows, h.columns):
        raise InputError(f"{h.path}: pixel data of shape {raw.shape}, expected {(h.rows, h.columns)}")
    return raw


def _pixels(h: _SliceHeader) -> np.ndarray:
    """One slice with its rescale slope / intercept applied."""
    raw = _raw_pixels(h)
    if h.slope == 1.0 and h.intercept == 0.0:
        return raw
    return raw * np.float64(h.slope) + np.float64(h.intercept)


def _store_dtype(slices: list[_SliceHeader], raw_dtype: np.dtype) -> np.dtype:
    """The raw dtype without rescaling; the smallest of int16 / int32 that holds integral rescaling."""
    if all(h.slope == 1.0 and h.intercept == 0.0 for h in slices):
        return raw_dtype
    integral = all(h.slope == int(h.slope) and h.intercept == int(h.intercept) for h in slices)
    if raw_dtype.kind not in "ui" or not integral:
        return np.dtype(np.float32)
    info = np.iinfo(raw_dtype)
    ends = [v * h.slope + h.intercept for h in slices for v in (int(info.min), int(info.max))]
    for candidate in (np.int16, np.int32):
        if np.iinfo(candidate).min <= min(ends) and max(ends) <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    return np.dtype(np.float32)


def open_dicom_series(folder: str | Path) -> VolumeSource:
    """Describe the one DICOM series in ``folder`` (headers only; pixels are read per slab)."""
    folder = Path(folder)
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    headers = [h for f in files if (h := _read_header(f)) is not None]
    if not headers:
        raise InputError(f"{folder}: no DICOM image slices in this folder")
    slices, affine = _geometry(folder, _one_series(folder, headers))
    digest = hashlib.blake2b(digest_size=16)
    for h in slices:
        digest.update(h.path.name.encode())
        digest.update(h.path.read_bytes())
    raw0 = _raw_pixels(slices[0])
    dtype = _store_dtype(slices, raw0.dtype)
    first = slices[0]

    def slabs(thickness: int) -> Iterator[Slab]:
        for z0 in range(0, len(slices), thickness):
            z1 = min(len(slices), z0 + thickness)
            data = np.stack([_pixels(h) for h in slices[z0:z1]])
            yield Slab(z0, z1, data[None])

    return VolumeSource(
        path=folder,
        shape=(len(slices), first.rows, first.columns),
        num_bands=1,
        dtype=dtype,
        geometry=VolumeGeometry(affine=affine, source_format="dicom", slice_axis=0),
        source_id=digest.hexdigest(),
        slabs=slabs,
        has_mask=False,
        attrs={"dicom_series_uid": first.series},
    )
