"""Zarr stores on object storage cost few requests: each one is a round trip to a distant bucket."""

from __future__ import annotations

import numpy as np

from bench.latency_proxy import LatencyProxy
from pipeline.stores.location import ObjectLocation, remove_tree
from pipeline.stores.output import OutputStore
from pipeline.stores.zarr_groups import create_group, open_group
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import TileGrid
from tests.conftest import count_requests


def test_reading_a_stored_object_is_one_request(bucket: ObjectLocation, counted: LatencyProxy) -> None:
    group = create_group(bucket / "a.zarr")
    group.create_array("x", shape=(4,), chunks=(4,), dtype="uint8")[:] = np.arange(4, dtype=np.uint8)
    array = open_group(bucket / "a.zarr", mode="r")["x"]
    assert count_requests(counted, lambda: np.asarray(array[:])) == 1  # no HEAD for the size first


def test_a_fresh_output_store_on_a_bucket_takes_a_few_requests_and_reads_back(
    bucket: ObjectLocation, counted: LatencyProxy
) -> None:
    plan = BlockPlan.create(TileGrid.create((300, 200), 32, 0.0), 128, 64)
    made: list[OutputStore] = []

    def create() -> None:
        made.append(OutputStore.open_or_create(bucket / "o.zarr", plan, 3, True, "fingerprint"))

    # the existence check, the group, four arrays' checks and metadata together, the
    # group's attributes once: 21 with zarr 3.1 and s3fs 2026.9 (60 with Zarr clearing the
    # prefix itself, checking each array in turn, an attribute write per key and a HEAD
    # before every read)
    assert count_requests(counted, create) <= 23
    again = OutputStore.open_or_create(bucket / "o.zarr", plan, 3, True, "fingerprint")
    assert again.probabilities is not None and again.stats is not None and again.confidence is None
    assert not again.done_mask().any()


def test_removing_a_prefix_is_one_listing_and_one_bulk_delete(
    bucket: ObjectLocation, counted: LatencyProxy
) -> None:
    for k in range(5):
        (bucket / "work" / f"part{k}").write_bytes(b"x")
    assert count_requests(counted, lambda: remove_tree(bucket / "work")) == 2
    assert not (bucket / "work").exists()
    assert count_requests(counted, lambda: remove_tree(bucket / "nothing-here")) <= 3
