"""Export: output store → Cloud-Optimized GeoTIFF that GIS tools open directly.

The labels COG has the input's CRS, transform, width and height; 512×512
internal tiles; lossless DEFLATE with a predictor; overviews resampled with MODE
(a class map must never be averaged); an embedded palette; a nodata value; class
names (band metadata inside the TIFF, plus a PAM ``.aux.xml`` sidecar with
category names and a raster attribute table, which is where QGIS and GDAL look);
BigTIFF when the file could pass 4 GB. Everything is written under temporary
names in the destination folder and renamed into place last, so a reader never
sees a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS

COG_BLOCK = 512
WRITE_WINDOW = (COG_BLOCK, 8192)


@dataclass(frozen=True)
class Georeference:
    """Where the pixels are: CRS (WKT or None) and the affine transform."""

    crs_wkt: str | None
    transform: Sequence[float]

    def profile(self) -> dict[str, Any]:
        """rasterio profile entries."""
        return {
            "crs": CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None,
            "transform": Affine(*self.transform[:6]),
        }


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


def _cog_options(predictor: str, resampling: str) -> dict[str, str]:
    return {
        "BLOCKSIZE": str(COG_BLOCK),
        "COMPRESS": "DEFLATE",
        "LEVEL": "6",
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


def export_labels_cog(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    geo: Georeference,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    tags: dict[str, str] | None = None,
) -> Path:
    """Write the store's labels as a COG at ``output`` (atomically, with sidecar)."""
    output = Path(output)
    group = zarr.open_group(str(store_path), mode="r")
    labels = group["labels"]
    nodata = int(group.attrs["nodata"])
    dtype = str(labels.dtype)
    shape = labels.shape
    colormap = {i: (*map(int, rgb[:3]), 255) for i, rgb in enumerate(colors)}
    if dtype == "uint8":
        colormap[nodata] = (0, 0, 0, 0)
    with _temporary_sibling(output, ".staging.tif") as staging, _temporary_sibling(output, ".cog.tif") as cog:
        with rasterio.open(staging, "w", **_staging_profile(shape, 1, dtype, nodata, geo)) as dst:
            for rows, cols in _windows(shape):
                window = rasterio.windows.Window(
                    cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
                )
                dst.write(labels[rows, cols], 1, window=window)
            if dtype == "uint8":  # GDAL palettes exist for 8- and 16-bit; 16-bit ones are huge
                dst.write_colormap(1, colormap)
            dst.set_band_description(1, "class")
            dst.update_tags(1, CLASS_NAMES=json.dumps(list(class_names)))
            dst.update_tags(**(tags or {}), CLASS_NAMES=json.dumps(list(class_names)))
        rasterio.shutil.copy(staging, cog, driver="COG", **_cog_options("YES", "MODE"))
        aux = output.with_name(output.name + ".aux.xml")
        aux_tmp = aux.with_name(f".{aux.name}.tmp")
        aux_tmp.write_text(pam_xml(class_names, colors, nodata))
        os.replace(aux_tmp, aux)
        os.replace(cog, output)
    return output


def export_probabilities_cog(
    store_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    geo: Georeference,
    class_names: Sequence[str],
) -> Path:
    """Write per-class probabilities (float32, NaN nodata, AVERAGE overviews) as a COG."""
    output = Path(output)
    group = zarr.open_group(str(store_path), mode="r")
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
        rasterio.shutil.copy(staging, cog, driver="COG", **_cog_options("FLOATING_POINT", "AVERAGE"))
        os.replace(cog, output)
    return output
