"""`gigaseg train` on volumes: the same trainer fits 3D networks on NIfTI (or any volume format),
the checkpoint segments the volume it learned from, and mismatched inputs fail in one line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from _volume_cases import oblique_affine, write_nifti
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.cli import main
from models.checkpoint import load_checkpoint
from pipeline.errors import InputError
from pipeline.inputs.formats import describe_input
from pipeline.training.data import augment, open_pair, region_windows, scan_classes
from pipeline.training.settings import TrainSettings
from pipeline.training.trainer import fit
from tests.conftest import write_raster


def _sphere_pair(tmp_path, shape=(36, 40, 44), seed=0):
    """An MR-like volume (arbitrary intensity scale) with two bright spheres labelled 1."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    inside = np.zeros(shape, bool)
    for cz, cy, cx, r in ((14, 16, 12, 8), (20, 24, 33, 7)):
        inside |= (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r**2
    image = 800.0 + 400.0 * inside + rng.normal(0, 60, shape)
    affine = oblique_affine()
    # NIfTI axes are (i, j, k); the store reads them as (z, y, x) = (k, j, i)
    img = write_nifti(tmp_path / "t1.nii.gz", image.transpose(2, 1, 0).astype(np.float32), affine)
    lab = write_nifti(tmp_path / "t1_labels.nii.gz", inside.transpose(2, 1, 0).astype(np.uint8), affine)
    return img, lab, inside


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(1, 30)), min_size=1, max_size=3),
    st.integers(3, 17),
)
def test_windows_cover_any_region_exactly_once(extents, size):
    region = tuple((a, a + n) for a, n in extents)
    covered = np.zeros([b for _, b in region], np.int32)
    for win in region_windows(region, size):
        assert all(b - a <= size for a, b in win)
        covered[tuple(slice(a, b) for a, b in win)] += 1
    inner = covered[tuple(slice(a, b) for a, b in region)]
    assert (inner == 1).all() and covered.sum() == inner.size


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(6, 6, 6), (4, 7, 7), (5, 8)]))
def test_augmentation_moves_image_and_labels_together(seed, shape):
    labels = np.arange(np.prod(shape)).reshape(shape)
    image = np.stack([labels, -labels]).astype(np.float32)
    x, y = augment(image, labels, np.random.default_rng(seed), jitter=0.0)
    assert x.shape[1:] == y.shape and sorted(y.ravel()) == sorted(labels.ravel())
    assert (x[0] == y).all() and (x[1] == -y).all()


def test_volume_pair_is_held_out_along_its_last_axis(tmp_path):
    img, lab, inside = _sphere_pair(tmp_path)
    scene, names = open_pair(img, lab, tmp_path / "stores", val_fraction=0.25)
    assert scene.image.spatial_shape == inside.shape and names is None
    assert scene.train == ((0, 36), (0, 40), (0, 33)) and scene.val == ((0, 36), (0, 40), (33, 44))
    assert scan_classes([scene]) == 2
    assert (scene.read_labels(scene.val) == inside[:, :, 33:]).all()


def test_unet3d_trained_on_a_nifti_segments_it(tmp_path):
    img, lab, inside = _sphere_pair(tmp_path)
    ckpt = tmp_path / "spheres.pt"
    code = main(
        [
            "train", str(img), "--labels", str(lab), "-o", str(ckpt), "--arch", "unet3d",
            "--arch-config", '{"width": 4, "depth": 2, "padding": "same"}',
            "--epochs", "4", "--steps-per-epoch", "6", "--tile", "24", "--batch-size", "2",
            "--lr", "0.01", "--normalization", "zscore", "--val-fraction", "0.25", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    _, card = load_checkpoint(ckpt)
    assert card.normalization == {"kind": "zscore"}, "per-scene normalisation is resolved per scene"
    spacing = describe_input(img).volume.geometry.spacing
    assert card.gsd is None and np.allclose(card.spacing, spacing)  # training records the voxel spacing (mm)
    out = tmp_path / "spheres.labels.nii.gz"
    code = main(["segment", str(img), "-m", str(ckpt), "-o", str(out), "--workers", "0", "--quiet"])
    assert code == 0
    result = nib.load(str(out))
    assert np.allclose(result.affine, nib.load(str(img)).affine, atol=1e-5)
    pred = np.asarray(result.dataobj).transpose(2, 1, 0) == 1
    dice = 2 * (pred & inside).sum() / (pred.sum() + inside.sum())
    assert dice > 0.8  # bright spheres on a noisy background; measured 0.97 after 24 steps


def test_mismatched_training_inputs_fail_in_one_line(tmp_path):
    img, lab, _ = _sphere_pair(tmp_path)
    other = write_nifti(tmp_path / "small.nii.gz", np.zeros((10, 10, 10), np.uint8))
    with pytest.raises(InputError, match=r"small\.nii\.gz: 10×10×10 voxels.*not the same grid"):
        open_pair(img, other, tmp_path / "stores", 0.2)
    flat = write_raster(tmp_path / "flat.tif", np.zeros((1, 40, 44), np.uint8))
    with pytest.raises(InputError, match=r"t1_labels\.nii\.gz: 3D labels for the 2D image"):
        open_pair(flat, lab, tmp_path / "stores", 0.2)
    scene, _ = open_pair(img, lab, tmp_path / "stores", 0.2)
    with pytest.raises(InputError, match=r"--arch unet is a 2D network but the training images are 3D"):
        fit([scene], TrainSettings(arch="unet"), 2)
    with pytest.raises(InputError, match=r"--normalization must be"):
        TrainSettings(arch="unet3d", normalization="window:5,1").validate()
    with pytest.raises(InputError, match=r"--val-fraction 0.99 leaves nothing to train on"):
        open_pair(img, lab, tmp_path / "stores", 0.99)
