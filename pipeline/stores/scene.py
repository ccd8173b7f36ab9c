"""The scene store: one Zarr v3 group per ingested scene.

Layout::

    scene.zarr/
      image     (C, *spatial)  source dtype, chunked (C, *chunk)
      valid     (*spatial)     bool, present only when the source has nodata / masks
      zarr.json attributes: kind, spatial_dims, georeferencing (crs, transform) or
                volume geometry (affine, spacing), nodata, band names, source
                identity, and ``complete`` once ingest has finished

A tiled GeoTIFF / COG is read in place instead (:mod:`pipeline.inputs.tiled_source`):
its store has neither array, only the attributes, with ``tiled_source`` saying
where the image is read from and ``image_shape`` / ``image_chunks`` / ``image_dtype``
what the ``image`` array would have been; reads go to the source's own tiles.

Locally the store is written under a temporary name and renamed when complete,
so a store that exists is a whole one. Object storage has no rename: there the
store is written in place and only its ``complete`` attribute, written last,
makes it one that :meth:`SceneStore.open` accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.inputs.tiled_source import TiledSource
from pipeline.stores.location import ObjectLocation, Where, location, remove_tree
from pipeline.stores.zarr_groups import create_arrays, create_group, open_group
from pipeline.tiling import regions
from pipeline.tiling.regions import Region

COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),)


@dataclass
class SceneStore:
    """An opened scene store (read side)."""

    path: Where
    group: zarr.Group

    @classmethod
    def open(cls, path: str | os.PathLike[str] | ObjectLocation) -> SceneStore:
        """Open a complete store."""
        path = location(path)
        group = open_group(path, mode="r")
        if not group.attrs.get("complete"):
            raise ValueError(f"{path}: scene store is incomplete (ingest did not finish)")
        return cls(path, group)

    @property
    def attrs(self) -> Mapping[str, Any]:
        """All scene metadata."""
        return self.group.attrs

    @property
    def source(self) -> TiledSource | None:
        """The tiled file the image is read from in place (None: the image is in this store)."""
        recorded = self.attrs.get("tiled_source")
        return None if recorded is None else TiledSource.from_attrs(recorded)

    @property
    def image(self) -> zarr.Array:
        """The ``(C, *spatial)`` image array (absent from a store read in place: see :meth:`read`)."""
        if self.source is not None:
            raise ValueError(f"{self.path}: the image is read in place from {self.source.url}")
        return self.group["image"]

    @property
    def has_mask(self) -> bool:
        """Whether some pixels may be nodata."""
        source = self.source
        return source.has_mask if source is not None else "valid" in self.group

    @property
    def num_bands(self) -> int:
        """Number of image bands."""
        return int(self._shape_and_chunks()[0][0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes."""
        return tuple(int(s) for s in self._shape_and_chunks()[0][1:])

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Spatial chunk shape of the image."""
        return tuple(int(c) for c in self._shape_and_chunks()[1][1:])

    @property
    def dtype(self) -> np.dtype:
        """The image's data type (the source's)."""
        if self.source is not None:
            return np.dtype(self.attrs["image_dtype"])
        return self.image.dtype

    @property
    def where(self) -> Where:
        """What a reader of the image opens: the source read in place, or this store."""
        source = self.source
        return source.location if source is not None else self.path

    def _shape_and_chunks(self) -> tuple[Sequence[int], Sequence[int]]:
        if self.source is not None:
            return self.attrs["image_shape"], self.attrs["image_chunks"]
        return self.image.shape, self.image.chunks

    def read(self, region: Region, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(B, *region)`` and valid mask ``(*region)`` of a region.

        ``bands`` are 0-based indices; ``None`` reads all. A run of consecutive
        bands is one zarr read straight into the result (no stacked copy). The
        mask is read-only; without nodata it is a broadcast ``True`` that takes
        no memory (measured in bench/RESULTS.md, "Figures behind the code's choices").
        """
        source = self.source
        if source is not None:
            image, valid = source.read(region, bands)
            return image, self._read_only_mask(region, valid)
        sl = regions.slices(region)
        if bands is None:
            image = self.image[(slice(None), *sl)]
        elif len(bands) and list(bands) == list(range(int(bands[0]), int(bands[0]) + len(bands))):
            image = self.image[(slice(int(bands[0]), int(bands[0]) + len(bands)), *sl)]
        else:
            image = np.stack([self.image[(int(b), *sl)] for b in bands])
        return image, self.valid(region)

    def valid(self, region: Region) -> np.ndarray:
        """The read-only valid mask of a region (a broadcast ``True`` for a scene without nodata)."""
        if not self.has_mask:
            return self._read_only_mask(region, None)
        source = self.source
        if source is not None:
            return self._read_only_mask(region, source.read(region, [0])[1])
        return self._read_only_mask(region, self.group["valid"][regions.slices(region)])

    @staticmethod
    def _read_only_mask(region: Region, valid: np.ndarray | None) -> np.ndarray:
        if valid is None:
            return np.broadcast_to(np.True_, tuple(e - s for s, e in region))
        valid = np.asarray(valid, dtype=bool)
        valid.flags.writeable = False
        return valid


class SceneStoreWriter:
    """Creates a scene store under a temporary name; :meth:`commit` makes it visible."""

    def __init__(
        self,
        path: str | os.PathLike[str] | ObjectLocation,
        num_bands: int,
        spatial_shape: Sequence[int],
        dtype: np.dtype,
        chunk: Sequence[int],
        with_mask: bool,
        attrs: Mapping[str, Any],
        source: TiledSource | None = None,
    ):
        """``source``: the image is read in place from there; the store gets the attributes only."""
        self.path = location(path)
        in_place = isinstance(self.path, ObjectLocation)
        self.tmp_path: Where = self.path if in_place else self.path.with_name(self.path.name + ".partial")
        remove_tree(self.tmp_path)
        spatial_shape = tuple(int(s) for s in spatial_shape)
        chunk = tuple(min(int(c), s) for c, s in zip(chunk, spatial_shape))
        if source is not None:
            self.image = self.valid = None
            attributes = {
                **attrs,
                "tiled_source": source.attrs(),
                "image_shape": [num_bands, *spatial_shape],
                "image_chunks": [num_bands, *chunk],
                "image_dtype": np.dtype(dtype).name,
                "complete": False,
            }
            self.group = create_group(self.tmp_path, attributes=attributes)
            return
        self.group = create_group(self.tmp_path, attributes={**attrs, "complete": False})
        dims = tuple("zyx"[-len(spatial_shape) :])
        specs: dict[str, dict[str, Any]] = {
            "image": {
                "shape": (num_bands, *spatial_shape), "chunks": (num_bands, *chunk), "dtype": dtype,
                "compressors": COMPRESSORS, "fill_value": 0, "dimension_names": ("band", *dims),
            },
        }  # fmt: skip
        if with_mask:
            specs["valid"] = {
                "shape": spatial_shape, "chunks": chunk, "dtype": bool, "compressors": COMPRESSORS,
                "fill_value": False, "dimension_names": dims,
            }  # fmt: skip
        arrays = create_arrays(self.group, specs)
        self.image = arrays["image"]
        self.valid = arrays.get("valid")

    def write(self, region: Region, image: np.ndarray, valid: np.ndarray | None) -> None:
        """Write one chunk-aligned region."""
        if self.image is None:
            raise ValueError(f"{self.path}: the image is read in place; nothing is written to the store")
        sl = regions.slices(region)
        self.image[(slice(None), *sl)] = image
        if self.valid is not None:
            if valid is None:
                raise ValueError("this store has a mask: pass valid")
            self.valid[sl] = valid

    def commit(self, extra_attrs: Mapping[str, Any] | None = None) -> SceneStore:
        """Mark complete and move into place (replacing any older store)."""
        self.group.update_attributes({**(extra_attrs or {}), "complete": True})
        if self.tmp_path != self.path:
            remove_tree(self.path)
            os.replace(self.tmp_path, self.path)
        return SceneStore.open(self.path)

    def abort(self) -> None:
        """Remove the partial store."""
        remove_tree(self.tmp_path)
