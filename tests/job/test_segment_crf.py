"""CRF in the engine: the refinement reach is part of the halo, so blockwise refinement
equals refining the whole scene in one block."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from flows.cli import main


@pytest.mark.parametrize("crf", ["local"])
def test_blockwise_crf_equals_one_block(small_scene, tiny_checkpoint, tmp_path, crf):
    outs = {}
    for block in (128, 1024):
        out = tmp_path / f"b{block}.tif"
        args = [
            "segment",
            str(small_scene),
            "-m",
            str(tiny_checkpoint),
            "-o",
            str(out),
            "--tile",
            "64",
            "--chunk",
            "128",
            "--block",
            str(block),
            "--crf",
            crf,
            "--crf-iterations",
            "3",
            "--crf-radius",
            "3",
            "--quiet",
            "--probabilities",
            str(tmp_path / f"p{block}.tif"),
        ]
        assert main(args) == 0
        with rasterio.open(out) as dst, rasterio.open(tmp_path / f"p{block}.tif") as prob:
            outs[block] = dst.read(1)
            outs[f"p{block}"] = prob.read()
    np.testing.assert_array_equal(outs[128], outs[1024])
    # Without the CRF the two block sizes already differ by up to ~5e-5 in float32 (the image-
    # following fixture's forward on differently shaped batches); the CRF must not add more.
    np.testing.assert_allclose(outs["p128"], outs["p1024"], atol=1e-4, equal_nan=True)
    plain_p = tmp_path / "plain_p.tif"
    args = ["segment", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "plain.tif")]
    assert main([*args, "--tile", "64", "--quiet", "--probabilities", str(plain_p)]) == 0
    with rasterio.open(tmp_path / "plain.tif") as dst, rasterio.open(plain_p) as prob:
        before, before_p = dst.read(1), prob.read()
    assert np.nanmax(np.abs(before_p - outs["p1024"])) > 1e-3, "the CRF changed nothing"
    assert ((before == 255) == (outs[1024] == 255)).all(), "nodata must stay nodata"


def test_unknown_crf_mode_is_refused(small_scene, tiny_checkpoint, tmp_path, capsys):
    code = main(
        [
            "segment",
            str(small_scene),
            "-m",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o.tif"),
            "--crf",
            "fancy",
        ]
    )
    assert code == 2 and "--crf" in capsys.readouterr().err
