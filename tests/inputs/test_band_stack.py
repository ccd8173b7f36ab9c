"""One scene in many files: a band stack (``a.tif,b.tif,…``) and a STAC item segment like the one
multi-band GeoTIFF they stand for; a coarser band is resampled to the finest grid; a changed file
is a new scene; a grid mismatch is one line naming both files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import InputError
from pipeline.inputs.band_stack import BandStack, scene_location, stack_vrt
from pipeline.inputs.ingest import content_id, ingest_raster
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from tests.conftest import noise_scene_array, write_raster

FINE = Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0)
COARSE = Affine(20.0, 0, 400_000.0, 0, -20.0, 5_000_000.0)
NAMES = ("green", "red", "nir")


def _bands(tmp_path: Path) -> tuple[list[Path], Path]:
    """Three single-band files of a 96×128 scene (``red`` at 20 m, the others at 10 m) and the one
    3-band GeoTIFF they make (``red`` repeated onto the 10 m grid: nearest-neighbour resampling)."""
    image = noise_scene_array((96, 128), seed=3)
    coarse = image[1, ::2, ::2]
    image[1] = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    files = []
    for name, band in zip(NAMES, image):
        data, transform = (coarse, COARSE) if name == "red" else (band, FINE)
        files.append(write_raster(tmp_path / f"T33_{name}.tif", data[None], transform=transform))
    return files, write_raster(tmp_path / "whole.tif", image, transform=FINE)


def _config(scene: str | Path, model: Path, out: Path) -> SegmentConfig:
    return SegmentConfig(input=scene, model=str(model), output=out, tile=64, block=128, chunk=64, quiet=True)


def _labels(scene: str | Path, model: Path, out: Path) -> np.ndarray:
    segment(_config(scene, model, out))
    with rasterio.open(out) as src:
        return src.read(1)


def test_stack_with_a_coarser_band_segments_like_the_multiband_file(tmp_path, tiny_checkpoint):
    files, whole = _bands(tmp_path)
    spec = ",".join(map(str, files))
    stacked = _labels(spec, tiny_checkpoint, tmp_path / "stack_classes.tif")
    np.testing.assert_array_equal(stacked, _labels(whole, tiny_checkpoint, tmp_path / "whole_classes.tif"))
    item = json.loads((tmp_path / "stack_classes.stac.json").read_text())
    sources = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert sources == [str(f) for f in files]
    assert scene_location(spec).name == "T33"


def test_changing_one_file_of_a_stack_makes_a_new_scene(tmp_path):
    files, _ = _bands(tmp_path)
    stack = BandStack(tuple(files))
    first = ingest_raster(stack_vrt(stack, tmp_path / "vrt"), tmp_path / "scene.zarr", chunk=64)
    again = ingest_raster(stack_vrt(stack, tmp_path / "vrt"), tmp_path / "scene.zarr", chunk=64)
    assert again.attrs["source_id"] == first.attrs["source_id"]  # unchanged: reused
    with rasterio.open(files[2], "r+") as dst:
        dst.write(np.full((1, 4, 4), 7, np.uint16), window=rasterio.windows.Window(0, 0, 4, 4))
    changed = ingest_raster(stack_vrt(stack, tmp_path / "vrt"), tmp_path / "scene.zarr", chunk=64)
    assert changed.attrs["source_id"] != first.attrs["source_id"]
    assert changed.image[2, 0, 0] == 7
    assert content_id(stack_vrt(stack, tmp_path / "vrt")) == changed.attrs["source_id"]


def test_grid_mismatches_are_one_line_naming_both_files(tmp_path):
    fine = write_raster(tmp_path / "a.tif", noise_scene_array((96, 128), 1, bands=1))
    utm34 = write_raster(tmp_path / "b.tif", noise_scene_array((96, 128), 2, bands=1), crs="EPSG:32634")
    short = write_raster(tmp_path / "c.tif", noise_scene_array((40, 64), 2, bands=1), transform=COARSE)
    three = write_raster(tmp_path / "d.tif", noise_scene_array((96, 128), 2))
    cases = {
        utm34: r"b\.tif: CRS EPSG:32634 differs from .*a\.tif's EPSG:32633",
        short: r"c\.tif: covers .*, but .*a\.tif covers .*: not the same extent",
        three: r"d\.tif: has 3 bands; a stack takes single-band files",
    }
    for other, message in cases.items():
        with pytest.raises(InputError, match=message) as raised:
            stack_vrt(BandStack((fine, other)), tmp_path / "vrt")
        assert "\n" not in str(raised.value)


def _item(tmp_path: Path, files: list[Path]) -> Path:
    """A STAC item whose band assets come in another order than the model's (nir, green, red),
    named by ``eo:bands`` common names, with relative hrefs."""
    item = pystac.Item("T33-scene", None, None, dt.datetime(2024, 6, 1, tzinfo=dt.UTC), {})
    for key, name in (("B08", "nir"), ("B03", "green"), ("B04", "red")):
        href = f"./{files[NAMES.index(name)].name}"
        bands = [{"name": key, "common_name": name}]
        item.add_asset(key, pystac.Asset(href, roles=["data"], extra_fields={"eo:bands": bands}))
    item.add_asset("thumbnail", pystac.Asset("./thumb.png", roles=["thumbnail"]))
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)))
    return path


@pytest.fixture
def named_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny model with its bands named green, red, nir."""
    model, card = load_checkpoint(tiny_checkpoint)
    card.band_names = list(NAMES)
    return save_checkpoint(tmp_path / "named.safetensors", model, card)


def test_stac_item_segments_like_the_multiband_file(tmp_path, named_checkpoint):
    import mlflow

    from pipeline.tracking.segment_run import track_segment_run

    files, whole = _bands(tmp_path)
    item = _item(tmp_path, files)
    run = track_segment_run(_config(item, named_checkpoint, tmp_path / "item_classes.tif"))
    with rasterio.open(tmp_path / "item_classes.tif") as src:
        from_item = src.read(1)
    np.testing.assert_array_equal(from_item, _labels(whole, named_checkpoint, tmp_path / "whole_classes.tif"))
    tags = mlflow.MlflowClient().get_run(run.run_id).data.tags
    assert (tags["gigaseg.stac_item_id"], tags["gigaseg.stac_item"]) == ("T33-scene", str(item))
    out = json.loads((tmp_path / "item_classes.stac.json").read_text())
    links = [link for link in out["links"] if link["rel"] == "derived_from"]
    assert [link["href"] for link in links] == [str(item)] and "T33-scene" in links[0]["title"]


def test_bands_named_in_another_order_are_matched_by_name(tmp_path, named_checkpoint):
    _, whole = _bands(tmp_path)
    with rasterio.open(whole) as src:
        image, profile = src.read(), src.profile
    shuffled = tmp_path / "shuffled.tif"
    with rasterio.open(shuffled, "w", **profile) as dst:
        dst.write(image[[2, 0, 1]])
        dst.descriptions = ("NIR", "green", "red")
    labels = _labels(shuffled, named_checkpoint, tmp_path / "shuffled_classes.tif")
    np.testing.assert_array_equal(labels, _labels(whole, named_checkpoint, tmp_path / "whole_classes.tif"))
    with rasterio.open(shuffled, "r+") as dst:
        dst.descriptions = ("nir", "green", "swir")
    with pytest.raises(InputError, match=r"has bands \['nir', 'green', 'swir'\] but the model reads "):
        _labels(shuffled, named_checkpoint, tmp_path / "x.tif")


def test_stac_item_without_the_cards_bands_is_one_line(tmp_path, named_checkpoint, tiny_checkpoint):
    files, _ = _bands(tmp_path)
    item = _item(tmp_path, files)
    data = json.loads(item.read_text())
    del data["assets"]["B04"]
    item.write_text(json.dumps(data))
    missing = r"item\.json: STAC item T33-scene has no asset for band\(s\) \['red'\]"
    with pytest.raises(InputError, match=missing):
        _labels(item, named_checkpoint, tmp_path / "x.tif")
    with pytest.raises(InputError, match=r"tiny_unet\.safetensors names none"):
        _labels(item, tiny_checkpoint, tmp_path / "x.tif")


def test_training_reads_a_stac_item_by_band_names(tmp_path):
    from pipeline.training.request import TrainRequest
    from pipeline.training.scenes import open_training_scenes
    from pipeline.training.settings import TrainSettings
    from pipeline.training.trainer import training_band_names

    files, whole = _bands(tmp_path)
    item = _item(tmp_path, files)
    labels = write_raster(tmp_path / "labels.tif", np.ones((1, 96, 128), np.uint8), transform=FINE)
    settings = TrainSettings(band_names=["red", "nir"])
    request = TrainRequest([str(item)], [str(labels)], "m", settings, work_dir=tmp_path / "train")
    (scene,) = open_training_scenes(request).scenes
    with rasterio.open(whole) as src:
        np.testing.assert_array_equal(scene.image.read(((0, 96), (0, 128)))[0], src.read([2, 3]))
    assert training_band_names([scene], None) == ["red", "nir"]
    unnamed = TrainRequest([str(item)], [str(labels)], "m", TrainSettings(), work_dir=tmp_path)
    with pytest.raises(InputError, match=r"item\.json: a STAC item as a training image needs --band-names"):
        open_training_scenes(unnamed)
