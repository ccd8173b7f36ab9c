"""Volumes end to end: NIfTI / OME-Zarr / TIFF stack in, NIfTI / OME-Zarr out, aligned voxel for voxel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from flows.cli import main
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.engine.in_memory import predict_in_memory
from pipeline.execution.in_process import predictor_for, run_blocks_in_process
from pipeline.inputs.ome_zarr import open_ome_zarr
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import export, prepare
from pipeline.job.summary import label_metrics
from tests._varying_models import image_following_unet, label_spread
from tests._volume_cases import oblique_affine, structured_volume, unet3d_checkpoint, write_nifti

SMALL = ["--quiet", "--volume-block", "64", "--volume-chunk", "16", "--tile", "24"]


def _volume(shape=(29, 23, 19), seed=0) -> np.ndarray:
    """Noise with a bright box the fixture model labels as its top class (see ``structured_volume``)."""
    return structured_volume(shape, seed)


def _bright_box(shape) -> tuple[slice, ...]:
    return (slice(shape[0] // 3, None), slice(None), slice(None, shape[2] // 2))


@pytest.fixture(scope="module")
def model3d(tmp_path_factory) -> Path:
    return unet3d_checkpoint(tmp_path_factory.mktemp("m") / "unet3d.safetensors")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_labels_keep_the_input_affine_and_shape(tmp_path, model3d, suffix):
    affine = oblique_affine()
    src = write_nifti(tmp_path / f"scan{suffix}", _volume(), affine)
    out = tmp_path / f"labels{suffix}"
    assert main(["segment", str(src), "-m", str(model3d), "-o", str(out), *SMALL]) == 0
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape
    np.testing.assert_array_equal(b.affine, a.affine)
    assert not np.allclose(a.affine[:3, :3], np.diag(np.diag(a.affine[:3, :3])))  # really oblique
    for key in ("sform_code", "qform_code", "quatern_b", "quatern_c", "quatern_d", "srow_x", "srow_z"):
        np.testing.assert_array_equal(b.header[key], a.header[key])
    np.testing.assert_array_equal(b.header.get_zooms(), a.header.get_zooms())
    labels = np.asarray(b.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    label_spread(labels).check(min_classes=3, min_share=0.1)
    # voxel for voxel: the bright box is the top class, the rest mostly not (no flip, no shift)
    box = np.zeros(labels.shape, bool)
    box[_bright_box(labels.shape)] = True
    assert (labels[box] == 2).mean() > 0.9 and (labels[~box] == 2).mean() < 0.1
    assert not (tmp_path / f"labels{suffix}.gigaseg-work").exists()


@pytest.mark.parametrize("mode", ["3d", "3d-tta", "2d-slices"])
def test_blockwise_volume_equals_one_in_memory_pass(tmp_path, model3d, mode):
    shape = (20, 18, 17) if mode == "3d-tta" else (29, 23, 19)  # TTA: 8 passes per tile
    src = write_nifti(tmp_path / "scan.nii.gz", _volume(shape, seed=1), oblique_affine())
    model = str(model3d)
    extra: dict = {}
    if mode == "2d-slices":
        net = image_following_unet("unet", 1, [-0.3, 0.6], sharpness=8.0, width=4, depth=2)
        card = ModelCard("unet", net.config, ["a", "b", "c"], normalization={"kind": "zscore"}, tile_size=16)
        model = str(save_checkpoint(tmp_path / "unet2d.safetensors", net, card))
        extra = {"slice_axis": 1}
    config = SegmentConfig(
        input=src,
        model=model,
        output=tmp_path / "labels.nii.gz",
        probabilities=tmp_path / "probs.nii.gz",
        tile=24 if mode == "3d" else 16,
        volume_block=16,
        volume_chunk=16,
        tta=mode == "3d-tta",
        quiet=True,
        **extra,
    )
    job = prepare(config)
    assert job.plan.num_blocks >= 8
    run_blocks_in_process(job)
    outputs = export(job)
    labels_path, probs_path = outputs.labels, outputs.probabilities

    raw, valid = job.scene.read(tuple((0, s) for s in job.scene.spatial_shape), job.bands)
    ref = predict_in_memory(raw, valid, job.grid, job.window, predictor_for(job), job.normalizer(), 3)
    labels = np.asarray(nib.load(labels_path).dataobj).transpose(2, 1, 0)
    probs = np.asarray(nib.load(probs_path).dataobj).transpose(3, 2, 1, 0)
    label_spread(ref.labels).check(min_classes=3, min_share=0.1)
    np.testing.assert_allclose(probs, ref.probabilities, atol=1e-5)
    np.testing.assert_array_equal(labels, ref.labels)
    assert probs.shape[1:] == job.scene.spatial_shape


def test_flip_tta_is_equivariant_to_flipping_the_volume(tmp_path, model3d):
    """Mean over all mirrors: predicting a mirrored volume gives the mirrored prediction."""
    data = _volume(shape=(16, 16, 16), seed=2)
    outs = []
    for i, vol in enumerate([data, data[::-1, :, ::-1]]):
        src = write_nifti(tmp_path / f"v{i}.nii", np.ascontiguousarray(vol))
        out = tmp_path / f"p{i}.nii"
        args = ["segment", str(src), "-m", str(model3d), "-o", str(tmp_path / f"l{i}.nii")]
        assert main([*args, "--probabilities", str(out), "--tta", "--tile", "16", "--quiet"]) == 0
        outs.append(np.asarray(nib.load(out).dataobj))
    np.testing.assert_allclose(outs[1], outs[0][::-1, :, ::-1], atol=1e-5)


def test_ome_zarr_output_is_a_multiscale_image_with_labels(tmp_path, model3d):
    data = _volume(shape=(70, 24, 40), seed=3)
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    src = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    out = tmp_path / "seg.zarr"
    probs = tmp_path / "probs.nii.gz"
    args = ["segment", str(src), "-m", str(model3d), "-o", str(out), "--probabilities", str(probs)]
    assert main([*args, "--quiet", "--volume-block", "64", "--tile", "32"]) == 0
    root = zarr.open_group(str(out), mode="r")
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    image_ms = ome["multiscales"][0]
    assert [a["name"] for a in image_ms["axes"]] == ["c", "z", "y", "x"]
    seg = root["labels/segmentation"]
    assert root["labels"].attrs["ome"]["labels"] == ["segmentation"]
    ms = seg.attrs["ome"]["multiscales"][0]
    levels = [d["path"] for d in ms["datasets"]]
    assert len(levels) >= 2
    scale0 = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    scale1 = ms["datasets"][1]["coordinateTransformations"][0]["scale"]
    np.testing.assert_allclose(scale0, [2.0, 0.6, 0.5])
    np.testing.assert_allclose(scale1, [4.0, 1.2, 1.0])
    np.testing.assert_allclose(
        ms["datasets"][0]["coordinateTransformations"][1]["translation"], [30, 20, -10]
    )
    level0 = seg["0"][...]
    label_spread(level0).check(min_classes=3, min_share=0.1)
    np.testing.assert_array_equal(level0, np.asarray(nib.load(probs).dataobj).argmax(-1).transpose(2, 1, 0))
    for level in levels[1:]:  # each level the previous one's even voxels (nearest, never an average)
        expected = level0[(slice(None, None, 2 ** int(level)),) * 3]
        np.testing.assert_array_equal(seg[level][...], expected)
    label_meta = seg.attrs["ome"]["image-label"]
    assert [c["label-value"] for c in label_meta["colors"]][:3] == [0, 1, 2]
    assert [p["class"] for p in label_meta["properties"]] == ["label_0", "label_1", "label_2"]
    np.testing.assert_array_equal(root["0"][0], data.transpose(2, 1, 0))

    # and the OME-Zarr reads back as an input with the same voxels and spacing
    source = open_ome_zarr(out)
    assert source.shape == (40, 24, 70) and source.num_bands == 1
    np.testing.assert_allclose(source.geometry.spacing, (2.0, 0.6, 0.5))
    slabs = list(source.slabs(32))
    np.testing.assert_array_equal(np.concatenate([s.data for s in slabs], axis=1)[0], data.transpose(2, 1, 0))


def test_tiff_stack_with_spacing_becomes_a_volume(tmp_path, model3d):
    data = _volume(shape=(12, 40, 36), seed=4).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", data)
    out = tmp_path / "stack_labels.nii.gz"
    args = ["segment", str(tmp_path / "stack.tif"), "-m", str(model3d), "-o", str(out), *SMALL]
    assert main([*args, "--spacing", "2.5,0.5,0.4"]) == 0
    img = nib.load(out)
    assert img.shape == (36, 40, 12)
    np.testing.assert_allclose(img.header.get_zooms(), (0.4, 0.5, 2.5))


def test_label_volumes_in_millilitres(tmp_path, model3d):
    src = write_nifti(tmp_path / "scan.nii", _volume(shape=(20, 18, 16), seed=5), np.diag([2.0, 2.0, 3.0, 1]))
    config = SegmentConfig(input=src, model=str(model3d), output=tmp_path / "l.nii", tile=24, quiet=True)
    job = prepare(config)
    run_blocks_in_process(job)
    metrics = label_metrics(job)
    volumes, mean_p = metrics.volumes_ml, metrics.mean_probability
    labels = job.store.labels[...]
    for i, name in enumerate(job.card.class_names):
        assert volumes[name] == pytest.approx((labels == i).sum() * 12.0 / 1000.0)
    assert sum(volumes.values()) == pytest.approx(20 * 18 * 16 * 12 / 1000)
    assert all(1 / 3 <= p <= 1.0 for p in mean_p.values())


@pytest.mark.shared_data
def test_real_hippocampus_labels_overlay_the_scan(shared_data, tmp_path, model3d):
    src = shared_data / "medical" / "hippocampus" / "image.nii.gz"
    out = tmp_path / "hippo_labels.nii.gz"
    assert main(["segment", str(src), "-m", str(model3d), "-o", str(out), *SMALL]) == 0
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape
    np.testing.assert_array_equal(b.affine, a.affine)


def test_raster_to_ome_zarr(small_scene, tiny_checkpoint, tmp_path):
    out = tmp_path / "scene.zarr"
    args = ["segment", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(out), "--tile", "64"]
    assert main([*args, "--block", "256", "--chunk", "128", "--quiet"]) == 0
    seg = zarr.open_group(str(out), mode="r")["labels/segmentation"]
    ms = seg.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert seg["0"].shape == (530, 700)
    np.testing.assert_allclose(ms["datasets"][0]["coordinateTransformations"][0]["scale"], [10.0, 10.0])
    assert (seg["0"][:60, :90] == 255).all()  # nodata stays nodata
