"""One scene in several files (``a.tif,b.tif,…``): their bands, in the order given, on one grid.

Landsat and Sentinel-2 come as one file per band, and a STAC item as one asset per
band. A :class:`BandStack` names such a scene wherever a scene is taken (``segment``,
``promote --eval-image``, ``train``, the flows). It is read as a GDAL VRT that
references the files (no pixels copied), so everything that reads a raster reads a
stack the same way. The files must share CRS and extent; bands at a coarser
resolution (Sentinel-2's 20 m and 60 m bands beside its 10 m ones) are resampled
to the finest grid (nearest neighbour: measured values, none invented). Bands of
different data types become float32; each file's own nodata value becomes NaN in
the stack, so a pixel missing in any band is nodata for the image.

The VRT's content identity follows its files
(:func:`pipeline.inputs.ingest.content_id`), so changing any one file's bytes
makes a new scene.

>>> stack = scene_location("scene/LC08_B4.tif,scene/LC08_B5.tif")
>>> stack, stack.name
(BandStack('scene/LC08_B4.tif,scene/LC08_B5.tif'), 'LC08')
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.warp import transform as transform_points

from pipeline.errors import InputError
from pipeline.inputs.raster import RasterInfo, inspect_raster
from pipeline.stores.location import ObjectLocation, Where, check_readable, location
from pipeline.stores.object_storage_settings import gdal_path

SEPARATOR = ","
RESAMPLING = "nearest"
"""How a coarser band reaches the finest grid."""


@dataclass(frozen=True)
class BandStack:
    """A scene made of several files (or assets), one band of each, in order."""

    members: tuple[Where, ...]
    member_bands: tuple[int, ...] | None = None
    """The 1-based band read from each member (None: band 1 of single-band files)."""
    band_names: tuple[str, ...] | None = None
    """What to call the stack's bands (None: each member's own band description, else its stem)."""

    def __str__(self) -> str:
        return SEPARATOR.join(str(m) for m in self.members)

    def __repr__(self) -> str:
        return f"BandStack({str(self)!r})"

    @property
    def name(self) -> str:
        """A readable name: what the members' names share (``lsat7_2000`` for ``lsat7_2000_10.tif,…``)."""
        stems = [PurePosixPath(m.name).stem for m in self.members]
        common = stems[0]
        for stem in stems[1:]:
            while not stem.startswith(common):
                common = common[:-1]
        if any(len(stem) > len(common) for stem in stems):  # cut back to a whole part of the name
            cut = max(common.rfind(c) for c in "_-.")
            common = common if common[-1:] in ("_", "-", ".") else common[: max(cut, 0)]
        return common.rstrip("_-. ") or f"{stems[0]}_stack"

    stem = name

    def resolve(self) -> BandStack:
        """The same stack with absolute member paths."""
        return BandStack(tuple(m.resolve() for m in self.members), self.member_bands, self.band_names)

    def exists(self) -> bool:
        """Whether every member is there."""
        return all(m.exists() for m in self.members)


Scene = Where | BandStack
"""What a command takes as a scene: one location, or a band stack."""


def stack_members(spec: str | os.PathLike[str]) -> list[Where]:
    """The files of ``a.tif,b.tif,…`` (a single path gives itself)."""
    parts = [p.strip() for p in str(spec).split(SEPARATOR)]
    if any(not p for p in parts):
        raise InputError(f"{spec}: empty name in a band stack (expected a.tif,b.tif,…)")
    return [location(p) for p in parts]


def scene_location(spec: str | os.PathLike[str] | Scene) -> Scene:
    """A scene as the user named it: a :class:`BandStack` for ``a.tif,b.tif,…``, else its location.

    A local file whose own name has a comma is that file.
    """
    if isinstance(spec, BandStack | ObjectLocation | Path):
        return spec
    text = os.fspath(spec)
    if SEPARATOR not in text or os.path.exists(text):
        return location(text)
    members = stack_members(text)
    return BandStack(tuple(members)) if len(members) > 1 else members[0]


def check_scene_readable(scene: Scene) -> None:
    """Fail with one line naming the first file of ``scene`` that cannot be read."""
    for where in scene.members if isinstance(scene, BandStack) else (scene,):
        check_readable(where)


def scene_files(scene: Scene) -> tuple[Where, ...]:
    """The files a scene reads (one, or a stack's members)."""
    return scene.members if isinstance(scene, BandStack) else (scene,)


def _pixel(info: RasterInfo) -> float:
    a, b, _, d, e, _ = info.transform
    return max(abs(a), abs(e), abs(b), abs(d), 1e-12)


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_dict().get("proj") or wkt[:40])


def _check_same_crs(reference: RasterInfo, other: RasterInfo, tolerance_px: float) -> None:
    """Raise unless ``other``'s CRS puts its pixels where ``reference``'s does (codes may differ).

    The corners and centre of ``other``, taken from its CRS to ``reference``'s, must
    land within ``tolerance_px`` of ``reference``'s pixels of where they are. A file
    without a CRS (a bare mask) is taken to share the other's.
    """
    if reference.crs_wkt is None or other.crs_wkt is None or reference.crs_wkt == other.crs_wkt:
        return
    a, b, c, d, e, f = other.transform
    cols = np.array([0, other.width, 0, other.width, other.width / 2])
    rows = np.array([0, 0, other.height, other.height, other.height / 2])
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    try:
        tx, ty = transform_points(other.crs_wkt, reference.crs_wkt, xs.tolist(), ys.tolist())
    except Exception as exc:
        raise InputError(f"{other.path}: CRS cannot be related to {reference.path}'s ({exc})") from None
    shift = np.hypot(np.asarray(tx) - xs, np.asarray(ty) - ys) / _pixel(reference)
    if not np.all(np.isfinite(shift)) or shift.max() > tolerance_px:
        raise InputError(
            f"{other.path}: CRS {_crs_name(other.crs_wkt)} differs from {reference.path}'s "
            f"{_crs_name(reference.crs_wkt)} (the grids are {np.nanmax(shift):.2f} pixels apart; "
            f"at most {tolerance_px} accepted)"
        )


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
    pixel = _pixel(reference)
    if not np.allclose(ref_t, oth_t, rtol=0, atol=1e-6 * pixel + 1e-9):
        raise InputError(f"{other.path}: geotransform {tuple(oth_t)} differs from {reference.path}'s")
    _check_same_crs(reference, other, tolerance_px)


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = info.transform
    xs, ys = (c, c + a * info.width), (f, f + e * info.height)
    return min(xs), min(ys), max(xs), max(ys)


def check_stack_grid(finest: RasterInfo, other: RasterInfo, tolerance_px: float = 0.5) -> None:
    """Raise unless ``other`` covers ``finest``'s grid: same CRS and extent, any (coarser) resolution.

    A band at ``finest``'s resolution must lie on its grid exactly
    (:func:`check_same_grid`); a coarser one must cover the same extent within
    ``tolerance_px`` of the finest pixels, without rotation.
    """
    _check_same_crs(finest, other, tolerance_px)
    if np.allclose(finest.transform[:2] + finest.transform[3:5], other.transform[:2] + other.transform[3:5]):
        check_same_grid(finest, other, tolerance_px)
        return
    if other.transform[1] or other.transform[3] or finest.transform[1] or finest.transform[3]:
        raise InputError(f"{other.path}: a rotated grid cannot be resampled onto {finest.path}'s")
    gap = np.abs(np.subtract(_bounds(other), _bounds(finest))).max() / _pixel(finest)
    if gap > tolerance_px:
        box = ", ".join(f"{v:.6g}" for v in _bounds(other))
        ref = ", ".join(f"{v:.6g}" for v in _bounds(finest))
        raise InputError(
            f"{other.path}: covers ({box}), but {finest.path} covers ({ref}): not the same extent "
            f"({gap:.1f} of its pixels apart)"
        )


def _member_info(where: Where, band: int | None) -> RasterInfo:
    info = inspect_raster(where)
    if band is None and len(info.bands) != 1:
        raise InputError(f"{info.path}: has {len(info.bands)} bands; a stack takes single-band files")
    if band is not None and band not in info.bands:
        raise InputError(f"{info.path}: has no band {band} (it has {len(info.bands)})")
    return info


def _vrt_type(members: Sequence[RasterInfo]) -> tuple[str, bool, bool]:
    """The VRT's GDAL data type; whether bands become float32; whether any member has nodata."""
    dtypes = {m.dtype for m in members}
    dtype = members[0].dtype if len(dtypes) == 1 else "float32"
    any_nodata = any(m.nodata is not None for m in members)
    to_float = dtype == "float32" or (any_nodata and len(members) > 1)
    vrt_type = "Float32" if to_float else {"uint8": "Byte"}.get(dtype, dtype.capitalize())
    return vrt_type, to_float, any_nodata


def _source_xml(m: RasterInfo, band: int, grid: RasterInfo) -> str:
    """One band's source: the file (GDAL's path for a URL), its band, and the resampling to ``grid``."""
    nodata = "" if m.nodata is None else f"<NODATA>{m.nodata!r}</NODATA>"
    rects = ""
    if (m.width, m.height) != (grid.width, grid.height):
        rects = (
            f'<SrcRect xOff="0" yOff="0" xSize="{m.width}" ySize="{m.height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>'
        )
    where = m.path if isinstance(m.path, ObjectLocation) else m.path.resolve()
    return (
        f'<ComplexSource resampling="{RESAMPLING}">'
        f'<SourceFilename relativeToVRT="0">{escape(gdal_path(where))}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>{rects}{nodata}</ComplexSource>"
    )


def _vrt(members: Sequence[RasterInfo], bands: Sequence[int], names: Sequence[str]) -> str:
    """The VRT of the stack on the finest member's grid."""
    grid = min(members, key=lambda m: abs(m.transform[0] * m.transform[4] - m.transform[1] * m.transform[3]))
    vrt_type, to_float, any_nodata = _vrt_type(members)
    srs = f"<SRS>{escape(grid.crs_wkt)}</SRS>" if grid.crs_wkt else ""
    a, b, c, d, e, f = grid.transform
    lines = [
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
        srs,
        f"<GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    for i, (m, band, name) in enumerate(zip(members, bands, names), start=1):
        band_nodata = "<NoDataValue>nan</NoDataValue>" if to_float and any_nodata else ""
        if not to_float and m.nodata is not None:
            band_nodata = f"<NoDataValue>{m.nodata!r}</NoDataValue>"
        lines += [
            f'<VRTRasterBand dataType="{vrt_type}" band="{i}">',
            band_nodata,
            f"<Description>{escape(name)}</Description>",
            _source_xml(m, band, grid),
            "</VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(line for line in lines if line)


STACK_FOLDER = Path(tempfile.gettempdir()) / "gigaseg-stacks"
"""Where stacks' VRTs go by default: named by their text, so any process on the machine makes the same."""


def stack_vrt(stack: BandStack, folder: str | os.PathLike[str] | None = None) -> Path:
    """The stack as a VRT file in ``folder`` (default :data:`STACK_FOLDER`), its grids checked first.

    A grid mismatch is one line naming the two files and what differs.
    """
    bands = stack.member_bands or (None,) * len(stack.members)
    infos = [_member_info(m, b) for m, b in zip(stack.members, bands)]
    finest = min(infos, key=lambda m: _pixel(m))
    for info in infos:
        if info is not finest:
            check_stack_grid(finest, info)
    names = stack.band_names or [
        i.band_names[0] if not re.fullmatch(r"band_\d+", i.band_names[0]) else PurePosixPath(i.path.name).stem
        for i in infos
    ]
    text = _vrt(infos, [b or i.bands[0] for b, i in zip(bands, infos)], names)
    folder = Path(folder) if folder is not None else STACK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"stack-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}.vrt"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    with rasterio.open(path) as src:  # fail here, naming the stack, if GDAL cannot read it
        if src.count != len(stack.members):
            raise InputError(f"{stack}: stack has {src.count} bands, expected {len(stack.members)}")
    return path


def resolve_image(
    spec: str | os.PathLike[str] | Scene, folder: str | os.PathLike[str] | None = None
) -> Where:
    """A location GDAL can open for ``spec``: the file itself, or the VRT of a band stack in ``folder``."""
    scene = scene_location(spec)
    return stack_vrt(scene, folder) if isinstance(scene, BandStack) else scene


def vrt_sources(path: Path) -> list[Where]:
    """The files a local VRT reads (its ``SourceFilename`` entries), as locations.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "s.vrt").write_text(
    ...     '<VRTDataset><VRTRasterBand><SimpleSource><SourceFilename relativeToVRT="1">a.tif'
    ...     '</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>')
    >>> vrt_sources(folder / "s.vrt") == [folder / "a.tif"]
    True
    """
    import xml.etree.ElementTree as ET

    from pipeline.stores.object_storage_settings import from_gdal_path

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return []
    found: list[Where] = []
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if not name:
            continue
        where = from_gdal_path(name)
        if isinstance(where, Path) and element.get("relativeToVRT") == "1":
            where = path.parent / where
        if where not in found:
            found.append(where)
    return found
