"""The pipeline's CRF on a volume uses its voxel spacing, in the kernels and in the block halo."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from pipeline.engine.crf import local_crf
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import prepare, segment
from tests._volume_cases import unet3d_checkpoint, write_nifti

#: NIfTI voxel size (i, j, k) = store axes (x, y, z): thick slices along z.
ZOOMS = (0.7, 0.7, 2.8)


def _scan(path, shape=(20, 18, 12), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 30, size=shape)
    data[: shape[0] // 2, :, shape[2] // 3 :] += 90
    return write_nifti(path, data.astype(np.int16), np.diag([*ZOOMS, 1.0]))


def test_volume_crf_kernels_and_halo_follow_the_voxel_spacing(tmp_path):
    model = unet3d_checkpoint(tmp_path / "m.safetensors")
    config = SegmentConfig(
        input=_scan(tmp_path / "scan.nii.gz"),
        model=str(model),
        output=tmp_path / "l.nii.gz",
        tile=16,
        volume_block=16,
        volume_chunk=16,
        crf="local",
        quiet=True,
    )
    job = prepare(config)
    spacing = (2.8, 0.7, 0.7)  # store order (z, y, x)
    # radius 4 finest-axis pixels: 1 slice through-plane (2.8 / 0.7 = 4), 4 pixels in-plane.
    assert job.plan.reach == job.crf.reach(3, spacing) == (5, 20, 20)
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(rng.dirichlet(np.ones(3), size=(8, 9, 10)).transpose(3, 0, 1, 2).copy()).float()
    image = torch.from_numpy(rng.normal(0, 50, size=(1, 8, 9, 10))).float()
    valid = torch.ones(8, 9, 10, dtype=torch.bool)
    got = job.refiner()(probs, image, valid)
    torch.testing.assert_close(got, local_crf(probs, image, valid, job.crf, spacing))
    assert not torch.allclose(got, local_crf(probs, image, valid, job.crf, None), atol=1e-4)
    assert job.timings["crf"] > 0


def test_blockwise_volume_crf_with_anisotropic_spacing_equals_one_block(tmp_path):
    model = unet3d_checkpoint(tmp_path / "m.safetensors")
    scan = _scan(tmp_path / "scan.nii.gz", seed=2)
    probs = {}
    for block in (16, 64):
        out = tmp_path / f"p{block}.nii.gz"
        segment(
            SegmentConfig(
                input=scan,
                model=str(model),
                output=tmp_path / f"l{block}.nii.gz",
                probabilities=out,
                tile=16,
                volume_block=block,
                volume_chunk=16,
                crf="local",
                crf_iterations=2,
                quiet=True,
            )
        )
        probs[block] = np.asarray(nib.load(out).dataobj)
    np.testing.assert_allclose(probs[16], probs[64], atol=1e-5)
