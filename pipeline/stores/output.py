"""The output store: labels (+ optional probabilities) and the done-block record.

Layout::

    output.zarr/
      labels         (*spatial)           uint8/uint16, nodata = dtype max
      probabilities  (classes, *spatial)  float32, NaN where nodata (optional)
      confidence     (*spatial)           float16 top-class probability, NaN nodata (optional)
      entropy        (*spatial)           float16 entropy of the probabilities (nats) (optional)
      done           (*block counts)      uint8, one chunk per block
      label_stats    (*block counts, classes, 2)  float64: voxels per label and the sum of
                                          their winning probability, one chunk per block
      polygons/I_J.npz                    the block's polygon piece (optional, 2D)

Each block owns whole chunks of every array, including its own cell of
``done``, so workers never share a chunk. A block is marked done only after its
chunks are written; a rerun skips done blocks. The store records a fingerprint
of everything that determines its bytes (input identity, model, grid, blending,
refinement, block plan); a store with another fingerprint is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from pipeline.stores.block_output import BlockOutput
from pipeline.stores.labels import label_dtype, label_nodata
from pipeline.stores.location import ObjectLocation, Where, location, remove_tree
from pipeline.stores.scene import COMPRESSORS
from pipeline.stores.zarr_groups import create_arrays, create_group, open_group, writing_every_chunk
from pipeline.tiling import regions
from pipeline.tiling.blocks import Block, BlockPlan


def fingerprint(parts: Mapping[str, Any]) -> str:
    """Stable digest of the settings that determine an output's bytes."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class OutputStore:
    """Opened output store; create with :meth:`open_or_create`."""

    def __init__(self, path: Where, group: zarr.Group, arrays: Mapping[str, zarr.Array] | None = None):
        self.path = path
        self.group = group
        if arrays is None:  # an existing store: one listing, the members' metadata read together
            arrays = {name: writing_every_chunk(array) for name, array in group.arrays()}
        self.labels = arrays["labels"]
        self.probabilities = arrays.get("probabilities")
        self.confidence = arrays.get("confidence")
        self.entropy = arrays.get("entropy")
        self.done = arrays["done"]
        self.stats = arrays.get("label_stats")
        self.nodata = int(group.attrs["nodata"])

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str] | ObjectLocation,
        plan: BlockPlan,
        num_classes: int,
        with_probabilities: bool,
        fingerprint: str,
        attrs: Mapping[str, Any] | None = None,
        with_uncertainty: bool = False,
    ) -> OutputStore:
        """Resume the store at ``path`` if it has this fingerprint, else start it afresh."""
        path = location(path)
        if path.exists():
            try:
                group = open_group(path, mode="r+")
                if group.attrs.get("fingerprint") == fingerprint:
                    return cls(path, group)
            except (FileNotFoundError, ValueError, KeyError):
                pass
            remove_tree(path)
        group = create_group(path)
        arrays = _create_arrays(group, plan, num_classes, with_probabilities, with_uncertainty)
        nodata = label_nodata(num_classes)
        # Last, not with the group: a store whose fingerprint matches has all its arrays.
        group.update_attributes(
            {
                **(attrs or {}),
                "fingerprint": fingerprint,
                "nodata": nodata,
                "num_classes": num_classes,
                "block_shape": list(plan.block_shape),
            }
        )
        return cls(path, group, arrays)

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str] | ObjectLocation, fingerprint: str) -> OutputStore:
        """Open a store another process created; it must carry ``fingerprint`` (never wiped here)."""
        path = location(path)
        group = open_group(path, mode="r+")
        if group.attrs.get("fingerprint") != fingerprint:
            raise ValueError(f"{path}: output store was made with other settings (fingerprint differs)")
        return cls(path, group)

    def done_mask(self) -> np.ndarray:
        """Boolean array over the block lattice: which blocks are finished."""
        return np.asarray(self.done[...], dtype=bool)

    def pending(self, plan: BlockPlan) -> list[Block]:
        """Blocks not yet done, in lattice order."""
        done = self.done_mask()
        return [b for b in plan if not done[b.index]]

    def write_block(self, block: Block, output: BlockOutput) -> None:
        """Write a block's chunks, then mark it done (the order makes resumption safe)."""
        sl = regions.slices(block.region)
        self.labels[sl] = output.labels
        if self.probabilities is not None:
            if output.probabilities is None:
                raise ValueError("this store keeps probabilities: the block must carry them")
            self.probabilities[(slice(None), *sl)] = output.probabilities
        if self.confidence is not None:
            if output.confidence is None or output.entropy is None:
                raise ValueError("this store keeps confidence and entropy: the block must carry them")
            self.confidence[sl] = output.confidence.astype(np.float16)
            self.entropy[sl] = output.entropy.astype(np.float16)
        if output.label_stats is not None and self.stats is not None:
            self.stats[regions.unit(block.index)] = output.label_stats[(None,) * len(block.index)]
        if output.polygons is not None:
            pieces = self.path / "polygons"
            pieces.mkdir(parents=True, exist_ok=True)
            (pieces / _piece_name(block.index)).write_bytes(output.polygons)
        self.done[regions.unit(block.index)] = 1

    def polygon_pieces(self, plan: BlockPlan) -> Iterator[tuple[tuple[int, ...], bytes]]:
        """Each block's polygon piece, by block index (what a run with polygons wrote)."""
        for block in plan:
            yield tuple(block.index), (self.path / "polygons" / _piece_name(block.index)).read_bytes()

    def label_stats(self) -> np.ndarray:
        """``(classes, 2)``: voxels per label and the sum of their winning probability, over all blocks."""
        if self.stats is None:
            raise ValueError(f"{self.path}: this store keeps no label statistics")
        stats = np.asarray(self.stats[...])
        return stats.reshape(-1, *stats.shape[-2:]).sum(axis=0)

    def is_complete(self) -> bool:
        """Whether every block is done."""
        return bool(self.done_mask().all())


def _piece_name(index: Sequence[int]) -> str:
    return "_".join(str(int(i)) for i in index) + ".npz"


def _create_arrays(
    group: zarr.Group,
    plan: BlockPlan,
    num_classes: int,
    with_probabilities: bool,
    with_uncertainty: bool,
) -> dict[str, zarr.Array]:
    """The store's arrays, empty: labels, the optional maps, per-block label statistics and done flags.

    The pixel arrays keep their chunks but store them in Zarr shards that a block
    writes whole, one per row of the block's chunks: a block writes a few files or
    objects instead of one per chunk (half the write's CPU on disk, a few PUTs on
    object storage), and a strip of chunk rows (what the COG export reads) is whole
    shards, which Zarr reads in one request instead of chunk by chunk
    (bench/RESULTS.md, "Output store: shards" and "Object storage").
    """
    shape = plan.grid.shape
    chunks = tuple(min(c, s) for c, s in zip(plan.chunk_shape, shape))
    blocks = tuple(min(b, -(-s // c) * c) for b, c, s in zip(plan.block_shape, chunks, shape))
    shards = (chunks[0], *blocks[1:])
    dims = tuple("zyx"[-len(shape) :])
    pixels = {"shards": shards, "compressors": COMPRESSORS, "dimension_names": dims}
    specs: dict[str, dict[str, Any]] = {
        "labels": {
            "shape": shape, "chunks": chunks, "dtype": label_dtype(num_classes),
            "fill_value": label_nodata(num_classes), **pixels,
        },
        "label_stats": {
            "shape": (*plan.counts, num_classes, 2), "chunks": (*(1,) * len(shape), num_classes, 2),
            "dtype": "float64", "fill_value": 0.0,
        },
        "done": {"shape": plan.counts, "chunks": (1,) * len(shape), "dtype": "uint8", "fill_value": 0},
    }  # fmt: skip
    if with_probabilities:
        specs["probabilities"] = {
            "shape": (num_classes, *shape), "chunks": (num_classes, *chunks), "dtype": "float32",
            "fill_value": np.nan, "shards": (num_classes, *shards), "compressors": COMPRESSORS,
            "dimension_names": ("class", *dims),
        }  # fmt: skip
    for name in ("confidence", "entropy") if with_uncertainty else ():
        specs[name] = {"shape": shape, "chunks": chunks, "dtype": "float16", "fill_value": np.nan, **pixels}
    return create_arrays(group, specs)


def read_labels(
    path: str | os.PathLike[str] | ObjectLocation, region: Sequence[tuple[int, int]] | None = None
) -> np.ndarray:
    """Labels of a finished store (whole, or one region)."""
    group = open_group(path, mode="r")
    arr = group["labels"]
    return arr[regions.slices(region)] if region is not None else arr[...]
