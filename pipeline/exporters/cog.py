"""Export: output store → Cloud-Optimized GeoTIFF that GIS tools open directly.

The labels COG has the input's CRS, transform, width and height; 512×512
internal tiles; lossless DEFLATE at :data:`LABELS_DEFLATE_LEVEL` without a predictor
(differencing neighbouring class ids makes a class map larger and slower to write:
bench/RESULTS.md); MODE
overviews (a class map must never be averaged), computed by
:mod:`pipeline.exporters.overviews` in the pass that stages the labels; an
embedded palette; a nodata value; class names (band metadata inside the TIFF,
plus a PAM ``.aux.xml`` sidecar with category names and a raster attribute
table, which is where QGIS and GDAL look, and a QGIS style ``STEM.qml`` whose legend
lists exactly the classes: :mod:`pipeline.exporters.qgis_style`); BigTIFF when the
file could pass 4 GB.
Everything is written under temporary names in the destination folder and
renamed into place last, so a reader never sees a half-written file under the
final name.
"""

from __future__ import annotations

import json
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS
from zarr.storage import LocalStore

from pipeline.exporters.overviews import ModePyramid, overview_shapes
from pipeline.exporters.qgis_style import labels_qml, probabilities_qml
from pipeline.stores.transfer import write_text_atomically
from pipeline.stores.zarr_groups import open_group

COG_BLOCK = 512
WRITE_WINDOW = (COG_BLOCK, 8192)
LABELS_DEFLATE_LEVEL = 5
"""DEFLATE level of the labels COG: the highest of libdeflate's fast levels (GDAL's DEFLATE encoder);
from 6 up the encode gets much slower for a class map that gets only a little smaller."""
PROBABILITIES_DEFLATE_LEVEL = 6
"""DEFLATE level of the probabilities COG (float32, with the floating-point predictor)."""
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32"}


@dataclass(frozen=True)
class Georeference:
    """Where the pixels are: CRS (WKT or None) and the affine transform."""

    crs_wkt: str | None
    transform: Sequence[float]

    def scaled(self, shape: Sequence[int], to: Sequence[int]) -> Georeference:
        """The same footprint on a grid of ``to`` pixels instead of ``shape`` (an overview)."""
        factors = Affine.scale(shape[1] / to[1], shape[0] / to[0])
        return Georeference(self.crs_wkt, tuple(Affine(*self.transform[:6]) @ factors)[:6])

    def profile(self) -> dict[str, Any]:
        """rasterio profile entries."""
        return {
            "crs": CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None,
            "transform": Affine(*self.transform[:6]),
        }


@dataclass(frozen=True)
class _LabelGrid:
    """The labels as the GeoTIFFs carry them: size, data type, nodata value and georeference."""

    shape: tuple[int, int]
    dtype: str
    nodata: int
    geo: Georeference


def _windows(shape: Sequence[int]) -> Iterator[tuple[slice, slice]]:
    rows, cols = shape
    for r in range(0, rows, WRITE_WINDOW[0]):
        for c in range(0, cols, WRITE_WINDOW[1]):
            yield slice(r, min(r + WRITE_WINDOW[0], rows)), slice(c, min(c + WRITE_WINDOW[1], cols))


@contextmanager
def _temporary_sibling(final: Path, suffix: str) -> Iterator[Path]:
    """A unique hidden name beside ``final`` (same filesystem, so renaming is atomic).

    The file itself is created by whoever writes it, so it gets the user's umask.
    """
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _cog_options(predictor: str, resampling: str, level: int) -> dict[str, str]:
    return {
        "BLOCKSIZE": str(COG_BLOCK),
        "COMPRESS": "DEFLATE",
        "LEVEL": str(level),
        "PREDICTOR": predictor,
        "OVERVIEW_RESAMPLING": resampling,
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def _staging_profile(
    shape: Sequence[int], count: int, dtype: str, nodata: float, geo: Georeference
) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK,
        "blockysize": COG_BLOCK,
        "compress": "zstd",
        "zstd_level": 1,
        "bigtiff": "IF_SAFER",
        **geo.profile(),
    }


def pam_xml(class_names: Sequence[str], colors: Sequence[Sequence[int]], nodata: int) -> str:
    """A PAM sidecar with category names and a thematic raster attribute table."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = "class"
    ET.SubElement(band, "NoDataValue").text = str(nodata)
    cats = ET.SubElement(band, "CategoryNames")
    for name in class_names:
        ET.SubElement(cats, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [
        ("Value", 0, 5),
        ("Class_Name", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
        ("Alpha", 0, 9),
    ]
    for i, (name, typ, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = str(typ)
        ET.SubElement(fd, "Usage").text = str(usage)
    for value, (name, rgb) in enumerate(zip(class_names, colors)):
        row = ET.SubElement(rat, "Row", index=str(value))
        for cell in (value, name, *rgb[:3], 255):
            ET.SubElement(row, "F").text = str(cell)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _vrt_with_overviews(
    base: Path,
    overviews: Sequence[Path],
    grid: _LabelGrid,
    colormap: dict[int, tuple[int, ...]] | None,
    band_tags: dict[str, str],
    tags: dict[str, str],
) -> str:
    """A VRT over ``base`` that declares ``overviews`` as its overview levels.

    The COG driver copies a source's own overviews (``OVERVIEWS=AUTO``) instead of
    computing them, so this is how precomputed MODE levels reach the COG.
    """
    shape, dtype, nodata, geo = grid.shape, grid.dtype, grid.nodata, grid.geo
    root = ET.Element("VRTDataset", rasterXSize=str(shape[1]), rasterYSize=str(shape[0]))
    if geo.crs_wkt:
        ET.SubElement(root, "SRS").text = geo.crs_wkt
    a, b, c, d, e, f = geo.transform[:6]
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (c, a, b, f, d, e))
    _metadata(root, tags)
    band = ET.SubElement(root, "VRTRasterBand", dataType=GDAL_TYPES[dtype], band="1")
    ET.SubElement(band, "Description").text = "class"
    ET.SubElement(band, "NoDataValue").text = str(nodata)
    if colormap is not None:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for value in range(max(colormap) + 1):
            rgba = colormap.get(value, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(rgba[0]), c2=str(rgba[1]), c3=str(rgba[2]), c4=str(rgba[3]))
    _metadata(band, band_tags)
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(base)
    ET.SubElement(source, "SourceBand").text = "1"
    for path in overviews:
        overview = ET.SubElement(band, "Overview")
        ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(path)
        ET.SubElement(overview, "SourceBand").text = "1"
    return ET.tostring(root, encoding="unicode")


def _metadata(parent: ET.Element, items: dict[str, str]) -> None:
    if items:
        md = ET.SubElement(parent, "Metadata")
        for key, value in items.items():
            ET.SubElement(md, "MDI", key=key).text = value


def export_labels_cog(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    geo: Georeference,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    tags: dict[str, str] | None = None,
) -> Path:
    """Write the store's labels as a COG at ``output`` (atomically, with sidecar).

    One pass over the labels writes the full-resolution staging file and, through
    :class:`ModePyramid`, every MODE overview level; the COG copy then takes the
    levels as they are instead of resampling the full raster per level.
    """
    output = Path(output)
    group = open_group(store_path, mode="r")
    labels = group["labels"]
    nodata = int(group.attrs["nodata"])
    grid = _LabelGrid(labels.shape, str(labels.dtype), nodata, geo)
    level_shapes = overview_shapes(grid.shape, COG_BLOCK)
    names = json.dumps(list(class_names))
    with ExitStack() as stack:
        staging = stack.enter_context(_temporary_sibling(output, ".staging.tif"))
        level_paths = [
            stack.enter_context(_temporary_sibling(output, f".ovr{k + 1}.tif"))
            for k in range(len(level_shapes))
        ]
        vrt = stack.enter_context(_temporary_sibling(output, ".vrt"))
        cog = stack.enter_context(_temporary_sibling(output, ".cog.tif"))
        _stage_labels(labels, grid, staging, level_paths, level_shapes)
        vrt.write_text(
            _vrt_with_overviews(
                staging,
                level_paths,
                grid,
                _palette(grid.dtype, colors, nodata),
                {"CLASS_NAMES": names},
                {**(tags or {}), "CLASS_NAMES": names},
            )
        )
        rasterio.shutil.copy(vrt, cog, driver="COG", **_cog_options("NO", "MODE", LABELS_DEFLATE_LEVEL))
        write_text_atomically(
            output.with_name(output.name + ".aux.xml"), pam_xml(class_names, colors, nodata)
        )
        write_text_atomically(output.with_suffix(".qml"), labels_qml(class_names, colors))
        os.replace(cog, output)
    return output


def _palette(dtype: str, colors: Sequence[Sequence[int]], nodata: int) -> dict[int, tuple[int, ...]] | None:
    """The class colours as a GDAL palette, nodata transparent; None beyond 8 bits (16-bit ones are huge)."""
    if dtype != "uint8":
        return None
    palette = {i: (*map(int, rgb[:3]), 255) for i, rgb in enumerate(colors)}
    palette[nodata] = (0, 0, 0, 0)
    return palette


def _stage_labels(
    labels: zarr.Array,
    grid: _LabelGrid,
    staging: Path,
    level_paths: Sequence[Path],
    level_shapes: Sequence[tuple[int, int]],
) -> None:
    """Write the labels to ``staging`` and their MODE overview levels to ``level_paths``, in one pass."""
    shape, dtype, nodata, geo = grid.shape, grid.dtype, grid.nodata, grid.geo
    with ExitStack() as stack:
        dst = stack.enter_context(
            rasterio.open(staging, "w", **_staging_profile(shape, 1, dtype, nodata, geo))
        )
        level_files = [
            stack.enter_context(
                rasterio.open(path, "w", **_staging_profile(s, 1, dtype, nodata, geo.scaled(shape, s)))
            )
            for path, s in zip(level_paths, level_shapes)
        ]

        def write_level(level: int, first_row: int, rows: np.ndarray) -> None:
            window = rasterio.windows.Window(0, first_row, rows.shape[1], rows.shape[0])
            level_files[level - 1].write(rows, 1, window=window)

        pyramid = ModePyramid(len(level_shapes), nodata, write_level)
        _stream_strips(labels, dst, pyramid)
        pyramid.close()
        for f in (dst, *level_files):
            f.close()


def _stream_strips(labels: zarr.Array, dst: rasterio.io.DatasetWriter, pyramid: ModePyramid) -> None:
    """Each strip of rows to ``dst`` here, and to the pyramid on a second thread, in order.

    numpy and GDAL release the GIL, so the pyramid (and its files) run while this
    thread reads the next strip and writes the full resolution.
    """
    shape = labels.shape
    # On object storage a row of shards at a time (one request per shard instead of one
    # per chunk); on disk a COG block row whatever the chunk (reading part of a shard
    # file costs nothing there). A shard holds one row of a block's chunks, or a whole
    # block's rows in stores written before that layout.
    remote = labels.shards is not None and not isinstance(labels.store, LocalStore)
    step = labels.shards[0] if remote else COG_BLOCK
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gigaseg-overviews") as overviews:
        pushed: list[Future[None]] = []
        for start in range(0, shape[0], step):
            rows = np.asarray(labels[start : start + step, :])
            pushed.append(overviews.submit(pyramid.push, rows))
            dst.write(rows, 1, window=rasterio.windows.Window(0, start, shape[1], rows.shape[0]))
            if len(pushed) > 2:  # at most two strips queued: memory stays a few strips
                pushed.pop(0).result()
        for done in pushed:
            done.result()


def export_probabilities_cog(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    geo: Georeference,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write per-class probabilities (float32, NaN nodata, AVERAGE overviews) as a COG.

    With ``colors``, a QGIS style ``STEM.qml`` beside it shows the first class's
    probability as a ramp to that class's colour (any band can be picked in QGIS).
    """
    output = Path(output)
    group = open_group(store_path, mode="r")
    probs = group["probabilities"]
    shape = probs.shape[1:]
    with _temporary_sibling(output, ".staging.tif") as staging, _temporary_sibling(output, ".cog.tif") as cog:
        profile = _staging_profile(shape, probs.shape[0], "float32", float("nan"), geo)
        with rasterio.open(staging, "w", **profile) as dst:
            for rows, cols in _windows(shape):
                window = rasterio.windows.Window(
                    cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
                )
                dst.write(np.asarray(probs[:, rows, cols], dtype=np.float32), window=window)
            for i, name in enumerate(class_names, start=1):
                dst.set_band_description(i, name)
        options = _cog_options("FLOATING_POINT", "AVERAGE", PROBABILITIES_DEFLATE_LEVEL)
        rasterio.shutil.copy(staging, cog, driver="COG", **options)
        if colors:
            write_text_atomically(output.with_suffix(".qml"), probabilities_qml(class_names[0], colors[0]))
        os.replace(cog, output)
    return output
