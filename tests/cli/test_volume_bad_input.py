"""Bad volumes: one clear line naming the input, exit status 2, nothing left behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from flows.cli import main
from models.checkpoint import load_checkpoint
from pipeline.engine.in_memory import segment_array
from pipeline.inputs.normalization import normalizer_for
from tests._varying_models import label_spread
from tests._volume_cases import (
    oblique_affine,
    structured_volume,
    unet3d_checkpoint,
    write_dicom_series,
    write_nifti,
)
from tests.conftest import write_raster


@pytest.fixture(scope="module")
def model3d(tmp_path_factory) -> str:
    return str(unet3d_checkpoint(tmp_path_factory.mktemp("m") / "unet3d.safetensors"))


def _refused(capsys, *args: str, needles: tuple[str, ...]) -> None:
    code = main(["segment", *args, "--quiet", "--tile", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("gigaseg: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _left(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_folder_with_two_dicom_series(tmp_path, model3d, capsys):
    folder = tmp_path / "mixed"
    write_dicom_series(folder, np.ones((3, 8, 8), np.uint16), name_prefix="A", series_uid="1.2.3.1")
    write_dicom_series(folder, np.ones((4, 8, 8), np.uint16), name_prefix="B", series_uid="1.2.3.2")
    _refused(
        capsys,
        str(folder),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.nii.gz"),
        needles=("mixed", "2 DICOM series", "1.2.3.1: 3", "1.2.3.2: 4"),
    )
    assert _left(tmp_path, {"mixed"}) == []


def test_nifti_with_a_zero_sized_axis(tmp_path, model3d, capsys):
    src = write_nifti(tmp_path / "empty.nii", np.zeros((0, 4, 4), np.int16))
    _refused(
        capsys,
        str(src),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.nii"),
        needles=("empty.nii", "zero-sized axis"),
    )
    assert _left(tmp_path, {"empty.nii"}) == []


def test_4d_nifti_for_a_single_channel_3d_model(tmp_path, model3d, capsys):
    src = write_nifti(tmp_path / "multi.nii.gz", np.ones((8, 8, 8, 2), np.float32))
    _refused(
        capsys,
        str(src),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.nii.gz"),
        needles=("multi.nii.gz", "2 channel(s)", "4th axis", "expects 1"),
    )
    assert _left(tmp_path, {"multi.nii.gz"}) == []


def _segment_4d(src: Path, model: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """``gigaseg segment`` a 4D NIfTI; its labels (i, j, k) and probabilities (i, j, k, class)."""
    probs = out.with_name(out.name.replace(".nii.gz", ".probs.nii.gz"))
    args = ["segment", str(src), "-m", str(model), "-o", str(out), "--probabilities", str(probs)]
    assert main([*args, "--quiet", "--tile", "16"]) == 0
    return np.asarray(nib.load(out).dataobj), np.asarray(nib.load(probs).dataobj)


def test_4d_nifti_channels_feed_a_multi_channel_model(tmp_path):
    """Each channel of an (i, j, k, c) file is the model's channel c on the input's grid: the output
    keeps the affine and equals the library on the array itself; swapping the channels changes it."""
    model = unet3d_checkpoint(tmp_path / "two.safetensors", in_channels=2)  # weighs channel 0 2:1
    # Two channels whose bright boxes lie in different corners (the second is the first, mirrored).
    first = structured_volume((29, 23, 19), seed=0)
    data = np.stack([first, structured_volume((29, 23, 19), seed=1)[::-1, :, ::-1]], axis=-1)
    src = write_nifti(tmp_path / "multi.nii.gz", data, oblique_affine())
    labels, probs = _segment_4d(src, model, tmp_path / "o.nii.gz")

    out = nib.load(tmp_path / "o.nii.gz")
    np.testing.assert_allclose(out.affine, nib.load(src).affine, atol=1e-6)
    assert out.shape == data.shape[:3]
    net, card = load_checkpoint(model)
    image = np.ascontiguousarray(data.transpose(3, 2, 1, 0))  # (c, k, j, i): the engine's axis order
    expected = segment_array(
        image, net, 16, normalizer=normalizer_for(card.normalization), with_probabilities=True
    )
    label_spread(labels).check(min_classes=3, min_share=0.05)
    np.testing.assert_array_equal(labels.transpose(2, 1, 0), expected.labels)
    np.testing.assert_allclose(probs.transpose(3, 2, 1, 0), expected.probabilities, atol=1e-5)

    swapped = write_nifti(
        tmp_path / "swapped.nii.gz", np.ascontiguousarray(data[..., ::-1]), oblique_affine()
    )
    labels_swapped, _ = _segment_4d(swapped, model, tmp_path / "s.nii.gz")
    assert (labels_swapped != labels).mean() > 0.1, "the channels' order does not reach the model"


def test_truncated_nifti_gz(tmp_path, model3d, capsys):
    full = write_nifti(
        tmp_path / "full.nii.gz", np.random.default_rng(1).random((40, 40, 40)).astype(np.float32)
    )
    data = full.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    full.unlink()
    with pytest.raises(EOFError):  # the file really is cut: gzip cannot finish it
        gzip.decompress((tmp_path / "cut.nii.gz").read_bytes())
    _refused(
        capsys,
        str(tmp_path / "cut.nii.gz"),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.nii.gz"),
        needles=("cut.nii.gz", "truncated"),
    )
    assert _left(tmp_path, {"cut.nii.gz"}) == []


def test_volume_written_as_geotiff_is_refused_before_any_work(tmp_path, model3d, capsys):
    src = write_nifti(tmp_path / "v.nii", np.ones((8, 8, 8), np.int16))
    _refused(
        capsys, str(src), "-m", model3d, "-o", str(tmp_path / "o.tif"), needles=("o.tif", "volume", ".nii.gz")
    )
    assert _left(tmp_path, {"v.nii"}) == []


def test_tiff_stack_without_spacing_gets_a_hint(tmp_path, model3d, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", np.ones((5, 16, 16), np.uint8))
    _refused(
        capsys,
        str(tmp_path / "stack.tif"),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.nii"),
        needles=("stack.tif", "5 TIFF pages", "--spacing"),
    )
    assert _left(tmp_path, {"stack.tif"}) == []


def test_3d_model_on_a_2d_raster(tmp_path, model3d, capsys):
    scene = write_raster(tmp_path / "flat.tif", np.ones((1, 40, 40), np.uint8))
    _refused(
        capsys,
        str(scene),
        "-m",
        model3d,
        "-o",
        str(tmp_path / "o.tif"),
        needles=("flat.tif", "2D raster", "3D model"),
    )
    assert _left(tmp_path, {"flat.tif"}) == []
