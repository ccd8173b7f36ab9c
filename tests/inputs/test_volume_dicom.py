"""DICOM series: slices found by position (not file order), rescaled, placed by their headers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from flows.cli import main
from pipeline.inputs.dicom import open_dicom_series
from pipeline.inputs.volume import ingest_volume
from tests._volume_cases import unet3d_checkpoint, write_dicom_series


def _stored(shape=(9, 20, 17), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, size=shape).astype(np.uint16)


@pytest.mark.parametrize(
    ("orientation", "slope", "intercept"),
    [((1, 0, 0, 0, 1, 0), 1.0, -1024.0), ((0.6, 0.8, 0, 0, 0, -1), 0.5, -1000.5)],
    ids=["axial-hu", "oblique-fractional"],
)
def test_shuffled_series_reads_back_in_position_order_with_rescaling(tmp_path, orientation, slope, intercept):
    stored = _stored()
    spacing = (2.5, 0.7, 0.6)
    origin = (-100.0, -80.0, 30.0)
    folder = write_dicom_series(
        tmp_path / "series", stored, spacing, intercept, slope, orientation, origin, shuffle_seed=3
    )
    source = open_dicom_series(folder)
    store = ingest_volume(source, tmp_path / "scene.zarr", chunk=16)
    image = store.image[0]
    expected = stored * slope + intercept
    np.testing.assert_array_equal(image, expected.astype(image.dtype))
    assert image.dtype == (np.int32 if slope == 1.0 else np.float32)  # uint16 − 1024 needs int32
    np.testing.assert_allclose(source.geometry.spacing, spacing, rtol=1e-6)
    # voxel (k, r, c) sits at origin + k·normal·dz + r·col·dy + c·row·dx (LPS), stored as RAS
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    k, r, c = 4, 7, 11
    lps = np.array(origin) + k * spacing[0] * np.cross(row, col) + r * spacing[1] * col + c * spacing[2] * row
    world = source.geometry.affine @ np.array([k, r, c, 1.0])
    np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-5)


def test_dicom_folder_to_nifti_through_the_command_line(tmp_path):
    stored = _stored(shape=(10, 24, 20), seed=1)
    folder = write_dicom_series(tmp_path / "ct", stored, intercept=-1024.0)
    model = unet3d_checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "ct_labels.nii.gz"
    assert main(["segment", str(folder), "-m", str(model), "-o", str(out), "--tile", "16", "--quiet"]) == 0
    img = nib.load(out)
    assert img.shape == (20, 24, 10)  # (columns, rows, slices): i fastest, as converters write it
    np.testing.assert_allclose(img.header.get_zooms(), (0.6, 0.7, 2.5), rtol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 3], [100.0, 80.0, 30.0], atol=1e-4)  # LPS origin → RAS
