"""Opening and checking rasters that GDAL reads (GeoTIFF, VRT, plain TIFF, …).

Every problem that is the file's fault becomes an :class:`InputError` naming the
file and what is wrong, before any work starts where possible.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pipeline.errors import InputError
from pipeline.stores.location import ObjectLocation, Where, check_readable, location, storage_error
from pipeline.stores.object_storage_settings import open_raster

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


@dataclass(frozen=True)
class RasterInfo:
    """What ingest needs to know about a raster, read from its header."""

    path: Where
    width: int
    height: int
    dtype: str
    bands: tuple[int, ...]
    """1-based GDAL band numbers that are image data (alpha bands excluded)."""
    alpha_band: int | None
    band_names: tuple[str, ...]
    crs_wkt: str | None
    transform: tuple[float, ...]
    nodata: float | None
    has_mask: bool
    """Whether some pixels may be invalid (nodata value, alpha, internal mask, or NaN)."""
    block_shape: tuple[int, int]
    tiled: bool = False
    """A tiled GeoTIFF (every band alike): windows come straight from its tiles, so it can be read in place.

    A striped file (blocks as wide as the image) is not: a window of it costs whole
    strips, so a block's footprint would decode many times what it uses.
    """

    @property
    def georeferenced(self) -> bool:
        """Whether the raster has a CRS."""
        return self.crs_wkt is not None

    def attrs(self) -> dict[str, Any]:
        """Scene-store attributes describing this raster."""
        return {
            "kind": "raster",
            "spatial_dims": 2,
            "crs": self.crs_wkt,
            "transform": list(self.transform),
            "nodata": None if self.nodata is None or np.isnan(self.nodata) else self.nodata,
            "nodata_is_nan": self.nodata is not None and bool(np.isnan(self.nodata)),
            "band_names": list(self.band_names),
            "source_dtype": self.dtype,
            "source": str(self.path),
        }


def check_readable_file(path: str | os.PathLike[str] | ObjectLocation) -> Where:
    """Fail with a clear message for a missing, non-regular or empty file (local or a URL)."""
    path = location(path)
    if isinstance(path, ObjectLocation):
        return _check_object_file(path)
    check_readable(path)
    try:
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected a raster file")
        size = path.fs.size(path.url) if isinstance(path, ObjectLocation) else path.stat().st_size
    except InputError:
        raise
    except Exception as exc:
        raise storage_error(path, exc) from None
    if size == 0:
        raise InputError(f"{path}: file is empty")
    return path


def _check_object_file(where: ObjectLocation) -> ObjectLocation:
    """:func:`check_readable_file` at a URL in one request: what is there (object or prefix) and its size."""
    try:
        info = where.fs.info(where.url)
    except FileNotFoundError:
        check_readable(where)  # the bucket's or the server's own reason, when there is one
        raise InputError(f"{where}: no such file") from None
    except Exception as exc:
        raise storage_error(where, exc) from None
    if info.get("type") == "directory":
        raise InputError(f"{where}: is a folder, expected a raster file")
    if info.get("size") == 0:
        raise InputError(f"{where}: file is empty")
    return where


def gdal_reason(exc: BaseException) -> str:
    """First line of a GDAL error, or of the error it chains to when it only says "see previous"."""
    seen: BaseException | None = exc
    while seen is not None:
        lines = str(seen).strip().splitlines()
        if lines and "See previous exception" not in lines[0]:
            return lines[0]
        seen = seen.__cause__ or seen.__context__
    return "GDAL could not read it"


def inspect_raster(path: str | os.PathLike[str] | ObjectLocation) -> RasterInfo:
    """Open ``path`` with rasterio and describe it, or raise :class:`InputError`."""
    path = check_readable_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(path) as src:
                return _describe(path, src)
    except RasterioIOError as exc:
        reason = gdal_reason(exc)
        if "Invalid dataset dimensions" in reason:
            raise InputError(f"{path}: raster has zero size ({reason})") from None
        raise InputError(f"{path}: not a raster GDAL can read ({reason})") from None


def _describe(path: Where, src: rasterio.DatasetReader) -> RasterInfo:
    if src.width == 0 or src.height == 0 or src.count == 0:
        raise InputError(f"{path}: raster is empty ({src.count} bands of {src.width}×{src.height})")
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
        raise InputError(f"{path}: bands have different data types {sorted(dtypes)}")
    dtype = src.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: unsupported data type {dtype} (supported: {', '.join(sorted(SUPPORTED_DTYPES))})"
        )
    interp = list(src.colorinterp)
    alpha = [i + 1 for i, ci in enumerate(interp) if ci == ColorInterp.alpha]
    alpha_band = alpha[0] if alpha and src.count > 1 else None
    bands = tuple(b for b in range(1, src.count + 1) if b != alpha_band)
    names = tuple(src.descriptions[b - 1] or f"band_{b}" for b in bands)
    flags = src.mask_flag_enums
    per_dataset_or_nodata = any(
        any(f.name in ("nodata", "per_dataset", "alpha") for f in band_flags) for band_flags in flags
    )
    is_float = np.issubdtype(np.dtype(dtype), np.floating)
    has_mask = per_dataset_or_nodata or alpha_band is not None or src.nodata is not None or is_float
    crs = src.crs.to_wkt() if src.crs else None
    width = src.width
    return RasterInfo(
        path=path,
        width=src.width,
        height=src.height,
        dtype=dtype,
        bands=bands,
        alpha_band=alpha_band,
        band_names=names,
        crs_wkt=crs,
        transform=tuple(src.transform)[:6],
        nodata=src.nodata,
        has_mask=has_mask,
        block_shape=tuple(src.block_shapes[0]),
        tiled=src.driver == "GTiff" and len(set(src.block_shapes)) == 1 and src.block_shapes[0][1] < width,
    )


def read_window(
    src: rasterio.DatasetReader, info: RasterInfo, rows: tuple[int, int], cols: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read image bands and the valid mask of one window; corrupt data raises InputError."""
    return read_bands(src, info.path, info.bands, info.has_mask, rows, cols)


def read_bands(
    src: rasterio.DatasetReader,
    where: Where,
    bands: Sequence[int],
    has_mask: bool,
    rows: tuple[int, int],
    cols: tuple[int, int],
    mask_bands: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """1-based ``bands`` of one window and its valid mask (None without ``has_mask``).

    A float pixel that is NaN or infinite in any of ``mask_bands`` (default: ``bands``)
    is invalid too. Corrupt data raises InputError naming ``where`` and the window.
    """
    window = rasterio.windows.Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
    try:
        image = src.read(list(bands), window=window)
        valid = None
        if has_mask:
            valid = src.dataset_mask(window=window) > 0
            if np.issubdtype(image.dtype, np.floating):
                same = mask_bands is None or list(mask_bands) == list(bands)
                every = image if same else src.read(list(mask_bands), window=window)
                valid &= np.isfinite(every).all(axis=0)
    except RasterioIOError as exc:
        raise InputError(
            f"{where}: cannot read rows {rows[0]}–{rows[1]}, columns {cols[0]}–{cols[1]} "
            f"(truncated or corrupt file: {gdal_reason(exc)})"
        ) from None
    return image, valid
