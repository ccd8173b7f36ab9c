"""Bad input: one clear line naming the file, exit status 2, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.cli import main
from tests.conftest import write_raster


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["segment", *args, "--quiet", "--tile", "64", "--block", "256", "--chunk", "128"])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gigaseg: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def model(tiny_checkpoint: Path) -> str:
    return str(tiny_checkpoint)


def test_missing_file(tmp_path, model, capsys):
    code, err = _run(capsys, str(tmp_path / "nope.tif"), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "nope.tif", "no such file")
    assert _leftovers(tmp_path, set()) == []


def test_empty_file(tmp_path, model, capsys):
    (tmp_path / "empty.tif").write_bytes(b"")
    code, err = _run(capsys, str(tmp_path / "empty.tif"), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "empty.tif", "empty")
    assert _leftovers(tmp_path, {"empty.tif"}) == []


def test_text_file_named_tif(tmp_path, model, capsys):
    (tmp_path / "notes.tif").write_text("this is not a raster\n")
    code, err = _run(capsys, str(tmp_path / "notes.tif"), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "notes.tif", "not a raster")
    assert _leftovers(tmp_path, {"notes.tif"}) == []


def test_truncated_geotiff(tmp_path, model, capsys):
    rng = np.random.default_rng(0)
    full = write_raster(
        tmp_path / "full.tif", (rng.random((3, 600, 600)) * 999).astype(np.uint16), compress="deflate"
    )
    data = full.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    full.unlink()
    code, err = _run(capsys, str(tmp_path / "cut.tif"), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "cut.tif")
    assert "truncated" in err or "not a raster" in err
    assert _leftovers(tmp_path, {"cut.tif"}) == []


def test_band_count_that_does_not_match_the_model(tmp_path, model, capsys):
    scene = write_raster(tmp_path / "two.tif", np.ones((2, 80, 80), dtype=np.uint8))
    code, err = _run(capsys, str(scene), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "two.tif", "2 band", "expects 3")
    assert _leftovers(tmp_path, {"two.tif"}) == []


def test_unsupported_dtype(tmp_path, model, capsys):
    scene = write_raster(tmp_path / "cplx.tif", np.ones((3, 40, 40), dtype=np.complex64))
    code, err = _run(capsys, str(scene), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "cplx.tif", "unsupported data type complex64")


def test_zero_sized_raster(tmp_path, model, capsys):
    vrt = tmp_path / "zero.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="10">'
        '<VRTRasterBand dataType="Byte" band="1"></VRTRasterBand></VRTDataset>'
    )
    code, err = _run(capsys, str(vrt), "-m", model, "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "zero.vrt", "zero size")


def test_output_in_a_missing_folder(small_scene, tmp_path, model, capsys):
    code, err = _run(capsys, str(small_scene), "-m", model, "-o", str(tmp_path / "no" / "o.tif"))
    _assert_refused(code, err, "does not exist")


def test_existing_output_is_not_overwritten_without_flag(small_scene, tmp_path, model, capsys):
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    code, err = _run(capsys, str(small_scene), "-m", model, "-o", str(out))
    _assert_refused(code, err, "o.tif", "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    code, _ = _run(capsys, str(small_scene), "-m", model, "-o", str(out), "--overwrite")
    assert code == 0
    with rasterio.open(out) as dst:
        assert dst.width == 700


def test_tile_larger_than_the_raster_is_padded(tmp_path, model, capsys):
    scene = write_raster(tmp_path / "tiny.tif", np.full((3, 37, 29), 500, dtype=np.uint16))
    code = main(
        ["segment", str(scene), "-m", model, "-o", str(tmp_path / "o.tif"), "--tile", "512", "--quiet"]
    )
    assert code == 0
    with rasterio.open(tmp_path / "o.tif") as dst:
        assert (dst.width, dst.height) == (29, 37)
        assert dst.read(1).max() < 4


@pytest.mark.parametrize("overlap", ["1.0", "-0.2", "1.5"])
def test_overlap_outside_unit_interval(small_scene, tmp_path, model, capsys, overlap):
    code, err = _run(
        capsys, str(small_scene), "-m", model, "-o", str(tmp_path / "o.tif"), "--overlap", overlap
    )
    _assert_refused(code, err, "--overlap", "[0, 1)")


def test_unknown_architecture(small_scene, tmp_path, capsys):
    code, err = _run(capsys, str(small_scene), "-m", "arch:unetz", "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "unetz", "unknown architecture", "unet")


def test_model_file_that_is_not_a_checkpoint(small_scene, tmp_path, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    code, err = _run(capsys, str(small_scene), "-m", str(bogus), "-o", str(tmp_path / "o.tif"))
    _assert_refused(code, err, "model.safetensors", "checkpoint")


@pytest.mark.parametrize("option,value", [("--tile", "0"), ("--block", "-5"), ("--batch-size", "0")])
def test_non_positive_sizes(small_scene, tmp_path, model, capsys, option, value):
    code = main(["segment", str(small_scene), "-m", model, "-o", str(tmp_path / "o.tif"), option, value])
    err = capsys.readouterr().err.strip()
    _assert_refused(code, err, option)
