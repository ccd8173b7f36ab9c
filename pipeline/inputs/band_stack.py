"""One image from several single-band files (``a.tif,b.tif,…``), and grids that coincide.

A stack is written as a GDAL VRT that references the files (no pixels copied),
so everything that reads a raster reads a stack the same way. Bands of
different data types become float32; each file's own nodata value becomes NaN
in the stack, so a pixel missing in any band is nodata for the image.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.warp import transform as transform_points

from pipeline.errors import InputError
from pipeline.inputs.raster import RasterInfo, inspect_raster

SEPARATOR = ","


def stack_members(spec: str | os.PathLike[str]) -> list[Path]:
    """The files of ``a.tif,b.tif,…`` (a single path gives itself)."""
    parts = [p.strip() for p in str(spec).split(SEPARATOR)]
    if any(not p for p in parts):
        raise InputError(f"{spec}: empty name in a band stack (expected a.tif,b.tif,…)")
    return [Path(p) for p in parts]


def check_same_grid(reference: RasterInfo, other: RasterInfo, tolerance_px: float = 0.5) -> None:
    """Raise unless ``other`` lies on ``reference``'s pixel grid.

    Same size and transform are required. The CRS may differ by its code (e.g.
    NAD83 vs NAD83(HARN) for the same projection): it is accepted when the
    scene's corners and centre, taken from ``other``'s CRS to ``reference``'s,
    land within ``tolerance_px`` pixels of where they should.
    """
    if (other.width, other.height) != (reference.width, reference.height):
        raise InputError(
            f"{other.path}: {other.width}×{other.height} pixels, but {reference.path} has "
            f"{reference.width}×{reference.height}: not the same grid"
        )
    ref_t, oth_t = np.asarray(reference.transform), np.asarray(other.transform)
    pixel = max(abs(ref_t[0]), abs(ref_t[4]), 1e-12)
    if not np.allclose(ref_t, oth_t, rtol=0, atol=1e-6 * pixel + 1e-9):
        raise InputError(f"{other.path}: geotransform {tuple(oth_t)} differs from {reference.path}'s")
    if reference.crs_wkt is None or other.crs_wkt is None or reference.crs_wkt == other.crs_wkt:
        return
    a, b, c, d, e, f = oth_t
    cols = np.array([0, other.width, 0, other.width, other.width / 2])
    rows = np.array([0, 0, other.height, other.height, other.height / 2])
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    try:
        tx, ty = transform_points(other.crs_wkt, reference.crs_wkt, xs.tolist(), ys.tolist())
    except Exception as exc:
        raise InputError(f"{other.path}: CRS cannot be related to {reference.path}'s ({exc})") from None
    shift = np.hypot(np.asarray(tx) - xs, np.asarray(ty) - ys) / pixel
    if not np.all(np.isfinite(shift)) or shift.max() > tolerance_px:
        raise InputError(
            f"{other.path}: CRS differs from {reference.path}'s and the grids are "
            f"{np.nanmax(shift):.2f} pixels apart (at most {tolerance_px} accepted)"
        )


def _vrt(members: list[RasterInfo]) -> str:
    first = members[0]
    dtypes = {m.dtype for m in members}
    dtype = first.dtype if len(dtypes) == 1 else "float32"
    any_nodata = any(m.nodata is not None for m in members)
    to_float = dtype == "float32" or (any_nodata and len(members) > 1)
    vrt_type = "Float32" if to_float else {"uint8": "Byte"}.get(dtype, dtype.capitalize())
    srs = f"<SRS>{escape(first.crs_wkt)}</SRS>" if first.crs_wkt else ""
    a, b, c, d, e, f = first.transform
    lines = [
        f'<VRTDataset rasterXSize="{first.width}" rasterYSize="{first.height}">',
        srs,
        f"<GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    for i, m in enumerate(members, start=1):
        name = escape(str(m.path.resolve()))
        nodata = "" if m.nodata is None else f"<NODATA>{m.nodata!r}</NODATA>"
        band_nodata = "<NoDataValue>nan</NoDataValue>" if to_float and any_nodata else ""
        if not to_float and m.nodata is not None:
            band_nodata = f"<NoDataValue>{m.nodata!r}</NoDataValue>"
        lines += [
            f'<VRTRasterBand dataType="{vrt_type}" band="{i}">',
            band_nodata,
            f"<Description>{escape(m.band_names[0] if m.band_names else m.path.stem)}</Description>",
            f'<ComplexSource><SourceFilename relativeToVRT="0">{name}</SourceFilename>',
            f"<SourceBand>{m.bands[0]}</SourceBand>{nodata}</ComplexSource>",
            "</VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(line for line in lines if line)


def resolve_image(spec: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """A path GDAL can open for ``spec``: the file itself, or a VRT stack written to ``folder``."""
    members = stack_members(spec)
    if len(members) == 1:
        return members[0]
    infos = [inspect_raster(m) for m in members]
    for info in infos:
        if len(info.bands) != 1:
            raise InputError(f"{info.path}: has {len(info.bands)} bands; a stack takes single-band files")
    for info in infos[1:]:
        check_same_grid(infos[0], info)
    text = _vrt(infos)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"stack-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}.vrt"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    with rasterio.open(path) as src:  # fail here, naming the stack, if GDAL cannot read it
        if src.count != len(members):
            raise InputError(f"{spec}: stack has {src.count} bands, expected {len(members)}")
    return path
