"""``--blend auto`` (the default): the job runs ``crop`` for a model declared fully convolutional
and ``gaussian`` for one with global context, says which in its summary, and a resumed or
explicit run of the resolved mode is the same job."""

from __future__ import annotations

import numpy as np
import rasterio

from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment


def _run(scene, model: str, out, blend: str, **extra):
    config = SegmentConfig(
        input=scene,
        model=model,
        output=out,
        tile=64,
        block=128,
        chunk=128,
        blend=blend,
        workers=0,
        quiet=True,
        probabilities=out.with_name(out.stem + "_p.tif"),
        **extra,
    )
    summary = segment(config)
    with rasterio.open(out) as labels, rasterio.open(config.probabilities) as probs:
        return summary, labels.read(1), probs.read()


def test_auto_runs_crop_for_a_fully_convolutional_model(small_scene, tiny_checkpoint, tmp_path):
    auto, auto_labels, auto_p = _run(small_scene, str(tiny_checkpoint), tmp_path / "auto.tif", "auto")
    crop, crop_labels, crop_p = _run(small_scene, str(tiny_checkpoint), tmp_path / "crop.tif", "crop")
    gauss, _, gauss_p = _run(small_scene, str(tiny_checkpoint), tmp_path / "gauss.tif", "gaussian")
    assert (auto.blend, crop.blend, gauss.blend) == ("crop", "crop", "gaussian")
    np.testing.assert_array_equal(auto_labels, crop_labels)
    np.testing.assert_array_equal(auto_p, crop_p)
    assert np.nanmax(np.abs(auto_p - gauss_p)) > 0, "crop and gaussian blends gave the same probabilities"


def test_auto_runs_gaussian_for_a_model_with_global_pooling(tmp_path):
    from tests.conftest import write_raster

    rng = np.random.default_rng(3)
    scene = write_raster(tmp_path / "s.tif", (rng.random((3, 96, 160)) * 255).astype(np.uint8))
    summary, _, _ = _run(scene, "arch:lednet", tmp_path / "lednet.tif", "auto", num_classes=3)
    assert summary.blend == "gaussian"
