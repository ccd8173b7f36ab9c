"""A scene at another resolution than the model's: resampled to it, outputs mapped back to its grid.

Each reference is made by hand: resample the input with GDAL (scipy for volumes) →
segment that array with the library (it is at the model's resolution, so it runs as
is) → map the labels back with GDAL / scipy; the run must give the same labels, on
the input's own grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyogrio.raw import read
from rasterio.enums import Resampling as Method
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from scipy import ndimage

from flows.cli import main
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.tracking.runs import SEGMENT_EXPERIMENT
from tests._varying_models import image_following_unet, label_spread
from tests._volume_cases import structured_volume, unet3d_checkpoint, write_nifti
from tests.conftest import TINY_THRESHOLDS, write_raster

INPUT_GSD = 10.0
SHAPE = (96, 128)
SMALL = {"block": 32, "chunk": 32, "quiet": True}


def _raster_model(path: Path, gsd: float | None) -> Path:
    """The conftest's image-following U-Net (3 bands, 4 classes), its card at ``gsd`` m/px."""
    model = image_following_unet("unet", 3, TINY_THRESHOLDS, band_weights=(0.5, 0.3, 0.2), width=4, depth=2)
    card = ModelCard(
        arch="unet",
        config=model.config,
        class_names=["water", "forest", "field", "town"],
        normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5},
        tile_size=64,
        gsd=gsd,
    )
    return save_checkpoint(path, model, card)


@pytest.fixture
def scene(tmp_path) -> Path:
    """A 10 m/px ramp with noise (labels change across it, raggedly) and a nodata corner."""
    rng = np.random.default_rng(3)
    ramp = np.linspace(100, 3100, SHAPE[1])[None, None, :] + rng.normal(0, 250, (3, *SHAPE))
    data = np.clip(ramp, 100, 3100).astype(np.uint16)
    data[:, :11, :13] = 0
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


def _reference(src: Path, model: Path, factor: float, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities by hand: GDAL-resample → library on that raster → GDAL map-back."""
    folder.mkdir()
    with rasterio.open(src) as s:
        shape = (math.ceil(s.height / factor), math.ceil(s.width / factor))
        model_grid = s.transform @ Affine.scale(factor)
        method = Method.average if factor > 1 else Method.bilinear
        with WarpedVRT(
            s, crs=s.crs, transform=model_grid, width=shape[1], height=shape[0], resampling=method
        ) as v:
            resampled = v.read()
        valid, crs, transform = s.dataset_mask() > 0, s.crs, s.transform
    at_model = write_raster(folder / "at_model.tif", resampled, nodata=0, transform=model_grid)
    out = folder / "at_model_labels.tif"
    probs_out = folder / "at_model_probs.tif"
    segment(SegmentConfig(input=at_model, model=str(model), output=out, probabilities=probs_out, **SMALL))
    with rasterio.open(out) as lab, rasterio.open(probs_out) as pr:
        labels_model, probs_model = lab.read(1), pr.read()
    labels = np.full(SHAPE, 255, np.uint8)
    probs = np.full((probs_model.shape[0], *SHAPE), np.nan, np.float32)
    common = {"src_transform": model_grid, "src_crs": crs, "dst_transform": transform, "dst_crs": crs}
    reproject(labels_model, labels, src_nodata=255, dst_nodata=255, **common,
              resampling=Method.nearest if factor > 1 else Method.mode)  # fmt: skip
    reproject(probs_model, probs, src_nodata=np.nan, dst_nodata=np.nan, **common,
              resampling=Method.bilinear if factor > 1 else Method.average)  # fmt: skip
    labels[~valid] = 255
    probs[:, ~valid] = np.nan
    return labels, probs


@pytest.mark.parametrize("model_gsd", [5.0, 20.0], ids=["scene-2x-the-model-gsd", "scene-half-the-model-gsd"])
def test_a_scene_at_another_gsd_comes_out_on_its_own_grid_with_the_hand_made_labels(
    tmp_path, scene, model_gsd
):
    model = _raster_model(tmp_path / "model.safetensors", model_gsd)
    out, probs = tmp_path / "labels.tif", tmp_path / "probs.tif"
    config = SegmentConfig(input=scene, model=str(model), output=out, probabilities=probs, **SMALL)
    summary = segment(config)
    assert summary.resampled == f"10 m/px → {model_gsd:g} m/px"
    assert f"run at the model's resolution (10 m/px → {model_gsd:g} m/px) and mapped back" in summary.line()

    ref_labels, ref_probs = _reference(scene, model, model_gsd / INPUT_GSD, tmp_path / "ref")
    with rasterio.open(scene) as a, rasterio.open(out) as b, rasterio.open(probs) as p:
        for grid in (b, p):
            assert (grid.crs, grid.transform, grid.shape) == (a.crs, a.transform, a.shape)
        labels, probabilities = b.read(1), p.read()
    label_spread(labels).check(min_classes=4, min_share=0.05)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(probabilities, ref_probs, atol=1e-5)
    assert (labels[:11, :13] == 255).all()  # nodata stays nodata
    assert summary.pixels == SHAPE[0] * SHAPE[1]


def test_native_resolution_runs_the_scene_on_its_own_grid_without_resampling(tmp_path, scene):
    with_gsd = _raster_model(tmp_path / "m20.safetensors", 20.0)
    without = _raster_model(tmp_path / "plain.safetensors", None)
    work = tmp_path / "work"
    native = SegmentConfig(
        input=scene, model=str(with_gsd), output=tmp_path / "native.tif", native_resolution=True,
        work_dir=work, keep_work=True, **SMALL,
    )  # fmt: skip
    summary = segment(native)
    segment(SegmentConfig(input=scene, model=str(without), output=tmp_path / "plain.tif", **SMALL))
    assert summary.resampled is None
    assert not (work / "scene.resampled.zarr").exists() and not (work / "output.mapped.zarr").exists()
    with rasterio.open(tmp_path / "native.tif") as a, rasterio.open(tmp_path / "plain.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_a_resampled_and_a_native_run_never_reuse_each_others_blocks(tmp_path, scene):
    model = _raster_model(tmp_path / "m20.safetensors", 20.0)
    common = {"input": scene, "model": str(model), "work_dir": tmp_path / "work", "keep_work": True,
              "overwrite": True, **SMALL}  # fmt: skip
    resampled = SegmentConfig(output=tmp_path / "r.tif", **common)
    native = SegmentConfig(output=tmp_path / "n.tif", native_resolution=True, **common)

    first = segment(resampled)
    assert first.blocks_run == 4 and first.blocks_skipped == 0  # 48×64 model pixels in 32² blocks
    again = segment(resampled)
    assert again.blocks_run == 0 and again.blocks_skipped == 4  # a rerun resumes
    other = segment(native)
    assert other.blocks_skipped == 0 and other.blocks_run == 12  # 96×128 input pixels
    back = segment(resampled)
    assert back.blocks_skipped == 0 and back.blocks_run == 4
    with rasterio.open(tmp_path / "r.tif") as r:
        resampled_labels = r.read(1)
    segment(SegmentConfig(input=scene, model=str(model), output=tmp_path / "fresh.tif", **SMALL))
    with rasterio.open(tmp_path / "fresh.tif") as f:
        np.testing.assert_array_equal(resampled_labels, f.read(1))


def test_probabilities_polygons_region_metrics_and_stac_are_on_the_input_grid(tmp_path, scene):
    """Through ``gigaseg segment`` (the Prefect flow, tracked in MLflow)."""
    model = _raster_model(tmp_path / "m5.safetensors", 5.0)
    out, probs, vector = tmp_path / "classes.tif", tmp_path / "probs.tif", tmp_path / "classes.gpkg"
    args = ["segment", str(scene), "-m", str(model), "-o", str(out), "--probabilities", str(probs)]
    assert main([*args, "--vector", str(vector), "--block", "32", "--chunk", "32", "--quiet"]) == 0

    with rasterio.open(scene) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        labels, bounds = b.read(1), b.bounds
    item = json.loads((tmp_path / "classes.stac.json").read_text())
    assert item["properties"]["proj:shape"] == list(SHAPE)
    assert item["properties"]["proj:transform"][:6] == list(a.transform)[:6]
    assert item["properties"]["gigaseg:resampled"] == {"unit": "m/px", "from": [10.0], "to": [5.0]}

    regions = json.loads((tmp_path / "classes.regions.geojson").read_text())["features"]
    assert len(regions) == 12  # the input grid's 32-px blocks, not the model grid's 48
    meta, _, wkb, fields = read(str(vector), layer="classes")  # one polygon per region, input pixels
    geoms, classes = shapely.from_wkb(wkb), dict(zip(meta["fields"], fields))["class_id"]
    left, bottom, right, top = shapely.total_bounds(geoms)
    assert bounds.left <= left and right <= bounds.right and bounds.bottom <= bottom and top <= bounds.top
    for c in range(4):
        area = float(shapely.area(geoms[classes == c]).sum())
        assert area == pytest.approx((labels == c).sum() * INPUT_GSD**2)

    run = mlflow.search_runs(experiment_names=[SEGMENT_EXPERIMENT], order_by=["start_time DESC"]).iloc[0]
    assert run["params.resampled"] == "10 m/px → 5 m/px"


def test_a_1mm_nifti_for_a_2mm_model_keeps_its_affine_and_the_hand_made_labels(tmp_path):
    model = unet3d_checkpoint(tmp_path / "unet3d.safetensors", spacing=[2.0, 2.0, 2.0], tile_size=8)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20.0, 35.5, 7.0]
    data = structured_volume((32, 28, 24), seed=4).astype(np.float32)
    src = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    out = tmp_path / "labels.nii.gz"
    small = {"volume_block": 16, "volume_chunk": 16, "quiet": True}
    summary = segment(SegmentConfig(input=src, model=str(model), output=out, **small))
    assert summary.resampled == "1,1,1 mm → 2,2,2 mm"

    # By hand, axis order (i, j, k): isotropic factors make the store's (z, y, x) order irrelevant.
    shape = tuple(math.ceil(n / 2) for n in data.shape)
    coarse = ndimage.affine_transform(
        data.astype(np.float64), [2.0] * 3, [0.5] * 3, output_shape=shape, order=1, mode="nearest"
    ).astype(np.float32)
    coarse_affine = affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    at_model = write_nifti(tmp_path / "at_model.nii.gz", coarse, coarse_affine)
    segment(
        SegmentConfig(input=at_model, model=str(model), output=tmp_path / "at_model_labels.nii.gz", **small)
    )
    labels_model = np.asarray(nib.load(tmp_path / "at_model_labels.nii.gz").dataobj)
    reference = ndimage.affine_transform(
        labels_model, [0.5] * 3, [-0.25] * 3, output_shape=data.shape, order=0, mode="nearest"
    )

    result = nib.load(out)
    np.testing.assert_array_equal(result.affine, nib.load(src).affine)
    labels = np.asarray(result.dataobj)
    assert labels.shape == data.shape
    label_spread(labels).check(min_classes=3, min_share=0.05)
    np.testing.assert_array_equal(labels, reference)
