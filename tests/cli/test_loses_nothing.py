"""A run loses nothing: outputs appear together at the end, a failed run touches no earlier output,
expected failures are one line, and what the run writes has normal permissions (issue 25)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from models import build
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.errors import InputError, expected_failure
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.training.data import open_pair, scan_classes


def _write(path: Path, data: np.ndarray, nodata: float | None = None, crs: str | None = "EPSG:32633") -> Path:
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
        crs=crs, transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build("unet", in_channels=3, num_classes=2, width=4, depth=2)
    card = ModelCard(arch="unet", config=net.config, class_names=["a", "b"], tile_size=64)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", net, card)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(tmp_path / "scene.tif", (rng.random((3, 96, 128)) * 3000).astype(np.uint16))


@pytest.fixture
def warnings_said() -> list[str]:
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("gigaseg")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _config(scene: Path, model: Path, out: Path, **kw) -> SegmentConfig:
    return SegmentConfig(input=scene, model=str(model), output=out, block=256, chunk=128, quiet=True, **kw)


def _earlier_run(folder: Path) -> dict[str, bytes]:
    files = {"o.tif": b"earlier labels", "o.tif.aux.xml": b"<earlier/>", "o.regions.csv": b"earlier"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_a_run_that_fails_after_its_export_leaves_the_earlier_output_byte_identical(scene, model, tmp_path):
    earlier = _earlier_run(tmp_path)

    def fail(job):
        raise RuntimeError("the region table failed")

    with pytest.raises(RuntimeError):
        segment(_config(scene, model, tmp_path / "o.tif", overwrite=True), on_finished=fail)
    for name, data in earlier.items():
        assert (tmp_path / name).read_bytes() == data
    assert not [p.name for p in tmp_path.iterdir() if "staging" in p.name]


def test_an_overwriting_run_removes_the_earlier_runs_region_table_and_leaves_no_staging(
    scene, model, tmp_path
):
    _earlier_run(tmp_path)
    segment(_config(scene, model, tmp_path / "o.tif", overwrite=True))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["o.qml", "o.stac.json", "o.tif", "o.tif.aux.xml", "scene.tif"]
    with rasterio.open(tmp_path / "o.tif") as src:
        assert src.shape == (96, 128)


def test_every_file_a_run_writes_has_the_mode_of_a_normal_output(scene, model, tmp_path):
    mask = os.umask(0o022)
    try:
        segment(_config(scene, model, tmp_path / "o.tif", probabilities=tmp_path / "p.tif"))
        net = build("unet", in_channels=3, num_classes=2, width=4, depth=2)
        save_checkpoint(
            tmp_path / "c.safetensors", net, ModelCard(arch="unet", config=net.config, class_names=["a", "b"])
        )
    finally:
        os.umask(mask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir() if p.name != "scene.tif"}
    assert set(modes.values()) == {"0o644"}, modes


def test_expected_failures_are_one_line_and_bugs_are_not():
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/o.tif")
    assert expected_failure(denied) == "/data/o.tif: cannot write there (permission denied)"
    assert expected_failure(InputError("x.tif: no such file")) == "x.tif: no such file"
    assert expected_failure(ValueError("a bug")) is None
    assert expected_failure(FileNotFoundError(errno.ENOENT, "gone", "x")) is None


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0]], dtype=np.float32), "NaN"),
        (np.array([[0.0, 1.5], [1.0, 2.0]], dtype=np.float32), "fractional"),
        (np.array([[0, -3], [1, 2]], dtype=np.int16), "negative"),
        (np.array([[0, 1], [2, 40]], dtype=np.uint8), "imply 41 classes"),
    ],
    ids=["nan", "fractional", "negative", "outlier"],
)
def test_training_labels_that_are_not_class_ids_are_refused(tmp_path, values, said):
    image = _write(tmp_path / "i.tif", np.ones((1, 64, 64), dtype=np.uint8))
    labels = _write(tmp_path / "l.tif", np.tile(values, (32, 32))[None])
    scene, _ = open_pair(image, labels, tmp_path / "work", 0.25)
    with pytest.raises(InputError, match=said):
        scan_classes([scene])


def test_training_labels_whose_nodata_is_a_class_are_warned_about(tmp_path, warnings_said):
    from pipeline.evaluation.region_metrics import warn_nodata_is_a_class

    warn_nodata_is_a_class(tmp_path / "l.tif", 0.0, 3)
    warn_nodata_is_a_class(tmp_path / "l.tif", 255.0, 3)
    assert warnings_said == [
        f"{tmp_path / 'l.tif'}: nodata value 0 is also class 0, so that class's pixels are not scored "
        "(set another nodata value on the labels)"
    ]


def test_a_geotiff_with_a_transform_but_no_crs_is_not_called_pixel_coordinates(
    tmp_path, model, warnings_said
):
    rng = np.random.default_rng(0)
    scene = _write(tmp_path / "s.tif", (rng.random((3, 64, 64)) * 3000).astype(np.uint16), crs=None)
    segment(_config(scene, model, tmp_path / "o.tif"))
    assert [w for w in warnings_said if "CRS" in w] == [
        f"{scene}: has a geotransform but no CRS; the output keeps the transform and has no CRS either"
    ]


def test_a_tile_far_smaller_than_the_reach_and_a_thin_scene_are_warned_about(tmp_path, model, warnings_said):
    rng = np.random.default_rng(0)
    strip = _write(tmp_path / "strip.tif", (rng.random((3, 8, 600)) * 3000).astype(np.uint16))
    segment(_config(strip, model, tmp_path / "o.tif", tile=2))
    assert any(w.startswith("--tile 2 is far smaller than unet's receptive field") for w in warnings_said)
    segment(_config(strip, model, tmp_path / "o2.tif"))
    assert any("much thinner than the 64 px tile" in w for w in warnings_said), warnings_said
    warnings_said.clear()
    wider = _write(tmp_path / "wider.tif", (rng.random((3, 20, 600)) * 3000).astype(np.uint16))
    segment(_config(wider, model, tmp_path / "o3.tif"))  # 20 px is not thin for the card's 64 px tile
    assert not any("much thinner" in w for w in warnings_said), warnings_said
    segment(_config(wider, model, tmp_path / "o4.tif", tile=512))
    assert any("much thinner than the 512 px tile" in w for w in warnings_said), warnings_said


def test_an_all_nodata_input_is_warned_about(shared_data, tmp_path, warnings_said):
    src = shared_data / "satellite/edge/all-nodata.tif"
    config = SegmentConfig(
        input=src, model="arch:conv1x1", output=tmp_path / "o.tif", num_classes=2, quiet=True
    )
    segment(config)
    assert f"{src}: every pixel is nodata; the output is nodata throughout" in warnings_said


def test_a_truncated_file_says_what_gdal_failed_at_not_see_previous_exception(tmp_path):
    from pipeline.inputs.raster import inspect_raster, read_window
    from pipeline.stores.object_storage_settings import open_raster

    rng = np.random.default_rng(0)
    data = (rng.random((3, 600, 600)) * 999).astype(np.uint16)
    full = _write(tmp_path / "full.tif", data)
    with rasterio.open(full) as src:
        profile = src.profile | {"compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(tmp_path / "deflate.tif", "w", **profile) as dst:
        dst.write(data)
    whole = (tmp_path / "deflate.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    info = inspect_raster(tmp_path / "cut.tif")
    with open_raster(info.path) as src, pytest.raises(InputError) as caught:
        read_window(src, info, (0, 600), (0, 600))
    assert "truncated or corrupt file" in str(caught.value)
    assert "See previous exception" not in str(caught.value)
