"""Tiled GeoTIFFs / COGs are read in place: the scene store keeps no pixels, and reads equal a copy's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.inputs.band_stack import BandStack, stack_vrt
from pipeline.inputs.ingest import ingest_raster
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.stores.scene import SceneStore
from tests.conftest import write_raster

SHAPE = (3, 300, 260)


def _data(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, SHAPE).astype(np.uint16)


def _with_internal_mask(path: Path) -> Path:
    write_raster(path, _data())
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        mask = np.full(SHAPE[1:], 255, np.uint8)
        mask[100:170, 30:90] = 0
        dst.write_mask(mask)
    return path


def _float_with_nan(path: Path) -> Path:
    data = _data().astype(np.float32)
    data[1, 40:60, 200:] = np.nan
    data[0, 250:, :10] = np.inf
    return write_raster(path, data, blockxsize=64, blockysize=64)


def _with_alpha(path: Path) -> Path:
    alpha = np.full((1, *SHAPE[1:]), 255, np.uint16)
    alpha[0, :50, :50] = 0
    write_raster(path, np.concatenate([_data(), alpha]), photometric="RGB", alpha="YES")
    return path


def _with_nodata(path: Path) -> Path:
    data = _data()
    data[:, :70, :90] = 0
    return write_raster(path, data, nodata=0, blockxsize=64, blockysize=64)


VARIANTS = {
    "plain": lambda p: write_raster(p, _data(), blockxsize=64, blockysize=64),
    "nodata": _with_nodata,
    "internal mask": _with_internal_mask,
    "float NaN": _float_with_nan,
    "alpha": _with_alpha,
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory) -> tuple[SceneStore, SceneStore]:
    """The same tiled GeoTIFF read in place and copied."""
    tmp = tmp_path_factory.mktemp("tiled")
    source = VARIANTS[request.param](tmp / "scene.tif")
    return ingest_raster(source, tmp / "in_place.zarr", chunk=96), ingest_raster(
        source, tmp / "copied.zarr", chunk=96, copy=True
    )


def test_a_tiled_geotiff_is_read_in_place_and_its_store_holds_no_pixels(pair):
    in_place, copied = pair
    assert in_place.source is not None and copied.source is None
    assert sorted(p.name for p in Path(in_place.path).rglob("*") if p.is_file()) == ["zarr.json"]
    for what in ("num_bands", "spatial_shape", "chunk_shape", "dtype", "has_mask"):
        assert getattr(in_place, what) == getattr(copied, what), what
    assert {k: v for k, v in in_place.attrs.items() if not k.startswith(("tiled_source", "image_"))} == dict(
        copied.attrs
    )


regions = st.tuples(
    st.integers(0, SHAPE[1] - 1),
    st.integers(1, SHAPE[1]),
    st.integers(0, SHAPE[2] - 1),
    st.integers(1, SHAPE[2]),
).map(lambda r: ((r[0], max(r[0] + 1, r[1])), (r[2], max(r[2] + 1, r[3]))))
band_lists = st.one_of(st.none(), st.lists(st.integers(0, SHAPE[0] - 1), min_size=1, max_size=4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(region=regions, bands=band_lists)
def test_any_region_and_bands_read_in_place_equal_the_copy(pair, region, bands):
    in_place, copied = pair
    image, valid = in_place.read(region, bands)
    want_image, want_valid = copied.read(region, bands)
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(valid, want_valid)
    np.testing.assert_array_equal(in_place.valid(region), want_valid)
    assert image.dtype == want_image.dtype and not valid.flags.writeable


def test_the_masks_are_not_trivial(pair):
    in_place, _ = pair
    valid = in_place.valid(((0, SHAPE[1]), (0, SHAPE[2])))
    assert valid.all() != in_place.has_mask  # every masked variant has invalid pixels


def test_striped_files_and_vrts_are_copied(tmp_path):
    striped = tmp_path / "striped.tif"
    with rasterio.open(
        striped, "w", driver="GTiff", width=SHAPE[2], height=SHAPE[1], count=3, dtype="uint16", tiled=False
    ) as dst:
        dst.write(_data())
    assert ingest_raster(striped, tmp_path / "s.zarr", chunk=96).source is None
    tiled = write_raster(tmp_path / "tiled.tif", _data(), blockxsize=64, blockysize=64)
    vrt = stack_vrt(BandStack((tiled, tiled), member_bands=(1, 2)), tmp_path / "vrt")
    assert ingest_raster(vrt, tmp_path / "v.zarr", chunk=96).source is None


def test_the_store_is_reused_while_the_file_is_the_same_and_rebuilt_when_it_moves_or_changes(tmp_path):
    source = write_raster(tmp_path / "a.tif", _data(), blockxsize=64, blockysize=64)
    first = ingest_raster(source, tmp_path / "scene.zarr", chunk=96)
    marker = Path(first.path) / "zarr.json"
    stamp = marker.stat().st_mtime_ns
    assert ingest_raster(source, tmp_path / "scene.zarr", chunk=96).source == first.source
    assert marker.stat().st_mtime_ns == stamp, "an unchanged source reuses its store"
    moved = tmp_path / "elsewhere" / "a.tif"
    moved.parent.mkdir()
    shutil.move(source, moved)
    again = ingest_raster(moved, tmp_path / "scene.zarr", chunk=96)
    assert again.source is not None and again.source.url == str(moved)
    assert again.attrs["source_id"] == first.attrs["source_id"]
    write_raster(moved, _data(seed=6), blockxsize=64, blockysize=64)
    changed = ingest_raster(moved, tmp_path / "scene.zarr", chunk=96)
    assert changed.attrs["source_id"] != first.attrs["source_id"]
    np.testing.assert_array_equal(changed.read(((0, 10), (0, 10)))[0], _data(seed=6)[:, :10, :10])


def test_segmenting_in_place_gives_the_bytes_of_a_copied_run(tiny_checkpoint, tmp_path):
    data = (np.random.default_rng(3).random(SHAPE) * 3000 + 100).astype(np.uint16)
    data[:, :70, :90] = 0
    source = write_raster(tmp_path / "scene.tif", data, nodata=0, blockxsize=64, blockysize=64)

    def run(name: str, copy: bool) -> tuple[bytes, bytes]:
        out = tmp_path / f"{name}.tif"
        config = SegmentConfig(
            input=source,
            model=str(tiny_checkpoint),
            output=out,
            probabilities=tmp_path / f"{name}.p.tif",
            work_dir=tmp_path / f"work_{name}",
            keep_work=True,
            block=128,
            chunk=64,
            copy_input=copy,
            quiet=True,
        )
        segment(config)
        store = SceneStore.open(tmp_path / f"work_{name}" / "scene.zarr")
        assert (store.source is None) == copy
        return out.read_bytes(), (tmp_path / f"{name}.p.tif").read_bytes()

    in_place, copied = run("in_place", False), run("copied", True)
    assert in_place == copied
    with rasterio.open(tmp_path / "in_place.tif") as src:
        assert src.read(1, masked=True).mask[:70, :90].all(), "the nodata corner stays nodata"
    with rasterio.open(tmp_path / "in_place.p.tif") as src:  # the comparison sees varying pixels
        assert float(np.nanstd(src.read())) > 0


def test_a_truncated_tiled_file_is_refused_before_any_work(tmp_path):
    source = write_raster(tmp_path / "cut.tif", _data(), blockxsize=64, blockysize=64, compress="deflate")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut.tif: truncated file: band \d's tile at row \d, column \d"):
        ingest_raster(source, tmp_path / "scene.zarr", chunk=96)
    assert not (tmp_path / "scene.zarr").exists()


def test_a_local_file_is_copied_when_blocks_may_run_on_other_nodes(tiny_checkpoint, tmp_path, monkeypatch):
    from pipeline.job.checks import check_inputs
    from pipeline.job.steps import ingest_scene

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    source = write_raster(tmp_path / "scene.tif", _data(), blockxsize=64, blockysize=64)

    def ingested(name: str, **kw) -> SceneStore:
        config = SegmentConfig(
            input=source, model=str(tiny_checkpoint), output=tmp_path / f"{name}.tif", quiet=True, **kw
        )
        return ingest_scene(config, check_inputs(config))

    assert ingested("here").source is not None
    assert ingested("cluster", ray_address="10.0.0.1:6379").source is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ingested("env").source is None
