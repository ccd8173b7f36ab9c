"""The output store's layout on disk: a block's chunks in a few Zarr shards, one per row of its chunks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.stores.block_output import BlockOutput
from pipeline.stores.output import OutputStore, read_labels
from pipeline.tiling import regions
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import TileGrid


@pytest.mark.parametrize(("shape", "block", "chunk"), [((300, 200), 128, 64), ((40, 70, 90), 32, 16)])
def test_a_block_writes_one_file_per_row_of_its_chunks_and_reads_back_by_any_region(
    tmp_path: Path, shape: tuple[int, ...], block: int, chunk: int
) -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, shape).astype(np.uint8)
    probs = rng.random((3, *shape), dtype=np.float32)
    plan = BlockPlan.create(TileGrid.create(shape, 32, 0.0), block, chunk)
    store = OutputStore.open_or_create(tmp_path / "o.zarr", plan, 3, True, "fingerprint")
    for b in plan:  # edge blocks are cut by the scene: their shards are partly outside it
        sl = regions.slices(b.region)
        store.write_block(b, BlockOutput(truth[sl], probs[(slice(None), *sl)]))

    chunk_rows = -(-shape[0] // chunk)
    expected = chunk_rows * math.prod(plan.counts[1:])  # not one file per chunk
    for name in ("labels", "probabilities"):
        files = [p for p in (tmp_path / "o.zarr" / name / "c").rglob("*") if p.is_file()]
        assert len(files) == expected, (name, len(files))
    assert store.is_complete()
    assert np.array_equal(read_labels(tmp_path / "o.zarr"), truth)
    # a region that cuts chunks and blocks reads only what it asks for, from inside the shards
    odd = tuple((s // 5, s - s // 7) for s in shape)
    assert np.array_equal(read_labels(tmp_path / "o.zarr", odd), truth[regions.slices(odd)])
    assert np.array_equal(np.asarray(store.probabilities[...]), probs)


@pytest.mark.parametrize("reopened", [False, True])
def test_a_block_of_nodata_is_stored_like_any_other_and_reads_back_as_nodata(
    tmp_path: Path, reopened: bool
) -> None:
    plan = BlockPlan.create(TileGrid.create((256, 256), 32, 0.0), 128, 64)
    store = OutputStore.open_or_create(tmp_path / "o.zarr", plan, 3, False, "fingerprint")
    if reopened:  # as a resumed run or a Ray worker opens it
        store = OutputStore.open_existing(tmp_path / "o.zarr", "fingerprint")
    block = next(iter(plan))
    nodata = np.full(regions.shape(block.region), store.nodata, np.uint8)
    store.write_block(block, BlockOutput(nodata, None))

    # Zarr's check for chunks of the fill value is skipped (it costs more than encoding them)
    assert len([p for p in (tmp_path / "o.zarr" / "labels" / "c").rglob("*") if p.is_file()]) == 2
    assert np.array_equal(read_labels(tmp_path / "o.zarr", block.region), nodata)
