"""Reading a scene store: any bands in any order, and a mask that costs nothing without nodata."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.inputs.ingest import ingest_raster
from pipeline.stores.scene import SceneStore
from tests.conftest import write_raster

SHAPE = (4, 90, 70)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, SceneStore, SceneStore]:
    """The same 4-band image ingested twice: without nodata, and with a nodata corner (0)."""
    tmp = tmp_path_factory.mktemp("scene_store_read")
    rng = np.random.default_rng(7)
    data = rng.integers(1, 60000, SHAPE).astype(np.uint16)
    plain = ingest_raster(write_raster(tmp / "plain.tif", data), tmp / "plain.zarr", chunk=32)
    holed = data.copy()
    holed[:, :20, :15] = 0
    masked = ingest_raster(write_raster(tmp / "holed.tif", holed, nodata=0), tmp / "holed.zarr", chunk=32)
    return data, plain, masked


def test_a_scene_without_nodata_reads_a_mask_that_takes_no_memory(stores):
    _, plain, _ = stores
    assert not plain.has_mask
    _, valid = plain.read(((5, 80), (3, 61)), [0])
    assert valid.shape == (75, 58) and valid.all()
    assert valid.strides == (0, 0), "one broadcast True, not a bool per pixel"
    with pytest.raises(ValueError, match="read-only"):
        valid[0, 0] = False


def test_a_masked_scene_reads_its_mask_read_only(stores):
    _, _, masked = stores
    _, valid = masked.read(((0, 40), (0, 40)), [1])
    assert masked.has_mask
    assert not valid[:20, :15].any() and valid[20:].all() and valid[:, 15:].all()
    with pytest.raises(ValueError, match="read-only"):
        valid[0, 0] = True


regions = st.tuples(
    st.integers(0, SHAPE[1] - 1),
    st.integers(1, SHAPE[1]),
    st.integers(0, SHAPE[2] - 1),
    st.integers(1, SHAPE[2]),
).map(lambda r: ((r[0], max(r[0] + 1, r[1])), (r[2], max(r[2] + 1, r[3]))))
band_lists = st.one_of(
    st.none(),
    st.lists(st.integers(0, SHAPE[0] - 1), min_size=1, max_size=6),  # any order, repeats too
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(region=regions, bands=band_lists)
def test_reading_any_bands_of_any_region_gives_the_stored_pixels(stores, region, bands):
    data, plain, _ = stores
    image, valid = plain.read(region, bands)
    (r0, r1), (c0, c1) = region
    expected = data[:, r0:r1, c0:c1] if bands is None else data[bands, r0:r1, c0:c1]
    np.testing.assert_array_equal(image, expected)
    assert image.dtype == data.dtype and valid.shape == expected.shape[1:]


def test_consecutive_bands_come_from_one_read(stores, monkeypatch):
    """A run of bands is one zarr read (no per-band reads stacked into a copy)."""
    _, plain, _ = stores
    reads: list[object] = []
    image_array = type(plain.image)
    original = image_array.__getitem__

    def counting(self, selection):
        reads.append(selection)
        return original(self, selection)

    monkeypatch.setattr(image_array, "__getitem__", counting)
    image, _ = plain.read(((0, 10), (0, 10)), [1, 2, 3])
    assert image.shape == (3, 10, 10) and len(reads) == 1
    reads.clear()
    plain.read(((0, 10), (0, 10)), [3, 1])
    assert len(reads) == 2
