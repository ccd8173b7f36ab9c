"""A scene read in place: the image of a tiled GeoTIFF / COG, read from the source's own tiles.

A tiled GeoTIFF already is what ingest would make of it: a grid of independently
compressed tiles any window can be read from. Copying it into the scene store
costs a decode, an encode and a second copy of the scene for nothing, so such an
input is not copied: its scene store keeps the metadata only (and a
:class:`TiledSource` description), and every read opens the file (or URL) and
reads the window, bands and valid mask from its tiles. Striped GeoTIFFs, VRTs
and other formats, where a window costs whole strips or a resampling, are still
ingested (:mod:`pipeline.inputs.ingest`).

Each read opens its own GDAL handle: reads may come from several threads at once
(a threaded Ray actor prefetches the next footprint while one block computes),
and a GDAL handle must not be shared between threads.

>>> TiledSource.from_attrs({"url": "scene.tif", "bands": [1, 2, 3], "has_mask": False}).bands
(1, 2, 3)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Interleaving
from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import InputError
from pipeline.inputs.raster import read_bands
from pipeline.stores.location import ObjectLocation, Where, location
from pipeline.stores.object_storage_settings import open_raster
from pipeline.tiling.regions import Region


def check_tiles_present(src: rasterio.DatasetReader, where: Where, bands: Sequence[int]) -> None:
    """Fail with one line when a tile of ``bands`` lies past the end of the file (a truncated copy).

    A copied scene finds that out while it is ingested, before any block runs; read
    in place, it would only show at the block that needs the missing tile, after
    the work folder was made. The tile index in the header says where every tile
    ends, so the check costs no pixel read. Sparse tiles (no bytes) are fine.
    """
    size = where.fs.size(where.url) if isinstance(where, ObjectLocation) else Path(where).stat().st_size
    for band in sorted(set(bands)) if src.interleaving != Interleaving.pixel else sorted(bands)[:1]:
        for (row, col), _ in src.block_windows(band):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
            length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
            if offset and length and int(offset) + int(length) > size:
                raise InputError(
                    f"{where}: truncated file: band {band}'s tile at row {row}, column {col} ends at byte "
                    f"{int(offset) + int(length)} of {size}"
                )


@dataclass(frozen=True)
class TiledSource:
    """Where a scene's image is read from in place, and how (recorded in its scene store)."""

    url: str
    bands: tuple[int, ...]
    """1-based GDAL band numbers of the scene's bands, in order (an alpha band is left out)."""
    has_mask: bool
    """Whether the valid mask is read too (nodata, alpha, an internal mask, or float data)."""

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TiledSource:
        """The source as a scene store records it (:meth:`attrs`)."""
        return cls(str(attrs["url"]), tuple(int(b) for b in attrs["bands"]), bool(attrs["has_mask"]))

    def attrs(self) -> dict[str, Any]:
        """What a scene store records to read from this source."""
        return {"url": self.url, "bands": list(self.bands), "has_mask": self.has_mask}

    @property
    def location(self) -> Where:
        """The source file or URL."""
        return location(self.url)

    def read(
        self, region: Region, bands: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image ``(B, rows, cols)`` of the 0-based scene ``bands`` (None: all) and the valid mask.

        The mask is None when the source has none (every pixel valid).

        The mask is computed over every scene band, whichever are read, so it is the
        one ingest would have stored; a float band's NaN or infinity is invalid.
        """
        rows, cols = region
        wanted = list(self.bands) if bands is None else [self.bands[int(b)] for b in bands]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(self.location) as src:
                return read_bands(src, self.location, wanted, self.has_mask, rows, cols, self.bands)
