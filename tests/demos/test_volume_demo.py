"""`gigaseg demo-volume` trains with `gigaseg train`'s trainer on all but a held-out slab of a volume,
whose labels reach neither the loss nor the choice of epoch, and scores that slab in the NIfTI it writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from _volume_cases import oblique_affine, write_nifti
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import load_checkpoint
from pipeline.demos.volume_demo import VAL_FRACTION, VolumeCase, run_case, train_case
from pipeline.evaluation.metrics import confusion, dice_per_class
from pipeline.training.data import slab_regions

SHAPE = (30, 28, 26)  # store order (z, y, x)


def _spheres(tmp_path, held_label: int | None = None) -> VolumeCase:
    """A noisy volume with two bright spheres (class 1) on background (0); the last 10 slices held out.

    ``held_label``: written into the held-out slab of the label file instead of the truth.
    """
    rng = np.random.default_rng(0)
    z, y, x = np.indices(SHAPE)
    inside = ((z - 8) ** 2 + (y - 10) ** 2 + (x - 12) ** 2 <= 36) | (
        (z - 23) ** 2 + (y - 16) ** 2 + (x - 14) ** 2 <= 36
    )
    image = 900.0 + 500.0 * inside + rng.normal(0, 50, SHAPE)
    labels = inside.astype(np.uint8)
    if held_label is not None:
        labels[20:] = held_label
    # NIfTI axes are (i, j, k); the store reads them as (z, y, x) = (k, j, i)
    img = write_nifti(tmp_path / "spheres.nii.gz", image.T.astype(np.float32), oblique_affine())
    lab = write_nifti(tmp_path / "spheres_labels.nii.gz", labels.T.copy(), oblique_affine())
    return VolumeCase(
        "spheres", img, lab, ["background", "sphere"], "zscore", lambda shape, affine: (0, 20, 30), "last 10"
    )


@settings(max_examples=200)
@given(
    st.lists(st.integers(2, 60), min_size=3, max_size=3),
    st.integers(0, 2),
    st.floats(0.05, 0.95),
    st.booleans(),
    st.floats(0.1, 0.5),
)
def test_held_out_slab_train_and_validation_parts_tile_the_volume_without_overlap(
    shape, axis, held_share, at_start, val_fraction
):
    n = shape[axis]
    size = min(max(1, round(n * held_share)), n - 1)
    start, stop = (0, size) if at_start else (n - size, n)
    rest = n - size
    if not 0 < round(rest * val_fraction) < rest:
        return
    parts = slab_regions(shape, axis, start, stop, val_fraction)
    cover = np.zeros(shape, np.int32)
    for part in parts:
        cover[tuple(slice(a, b) for a, b in part)] += 1
    assert (cover == 1).all()
    _, val, held = parts
    assert held[axis] == (start, stop)
    assert val[axis][0] == stop or val[axis][1] == start, "the validation strip borders the held-out slab"


def test_held_out_labels_reach_neither_the_loss_nor_the_validation(tmp_path):
    # class 7 does not exist (2 classes): cross-entropy raises if one such voxel reaches the loss
    case = _spheres(tmp_path, held_label=7)
    outcome, held = train_case(case, tmp_path / "work", tmp_path / "m.safetensors", steps=4, patch=16)
    assert held == ((20, 30), (0, 28), (0, 26))
    strip = round(20 * VAL_FRACTION)
    assert outcome.confusion.sum() == strip * 28 * 26, "validation counts exactly the strip's voxels"
    _, card = load_checkpoint(tmp_path / "m.safetensors")
    assert card.arch == "unet3d" and card.normalization == {"kind": "zscore"}


def test_demo_case_writes_nifti_on_the_input_grid_and_scores_the_held_out_slab(tmp_path):
    case = _spheres(tmp_path)
    result = run_case(case, tmp_path / "work", steps=30, patch=16)
    out = nib.load(result.output)
    assert np.allclose(out.affine, nib.load(case.image).affine) and out.shape == SHAPE[::-1]
    pred = np.asarray(out.dataobj).T[20:]
    truth = np.asarray(nib.load(case.labels).dataobj).T[20:]
    cm = confusion(pred.astype(np.int64).ravel(), truth.astype(np.int64).ravel(), 2)
    assert list(result.dice.values()) == dice_per_class(cm)
    assert (result.epochs, result.steps_per_epoch) == (1, 30)
    assert result.dice["sphere"] > 0.5  # bright spheres on noise; measured 0.94
