"""``gigaseg demo`` runs every stage of the main job and scores a scene the model never saw."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import rasterio
import ray

from flows.demo import FULL, QUICK, DemoSettings, run_demo
from pipeline.demos.sample_scene import LABEL_NODATA


def test_quick_preset_is_smaller_than_the_full_one():
    assert QUICK.size < FULL.size and QUICK.steps < FULL.steps and QUICK.width < FULL.width


def test_demo_trains_promotes_segments_on_ray_and_scores_the_unseen_scene(tmp_path: Path):
    settings = DemoSettings(
        size=256, eval_size=256, width=4, epochs=1, steps_per_epoch=3, tile=64,
        workers=2, model_name="demo-under-test", workdir=tmp_path / "demo",
    )  # fmt: skip
    lines: list[str] = []
    try:
        result = run_demo(settings, log=lines.append)
    finally:
        ray.shutdown()  # the segment stage's private Ray lives as long as its process: not past this test

    stage_lines = [line for line in lines if line.startswith("demo ")]
    names = [re.match(r"demo (\d)/5 (\w+):", line).group(2) for line in stage_lines]
    assert names == ["scenes", "train", "promote", "segment", "score"]
    assert all(re.search(r"\(\d+ s\)$", line) for line in stage_lines)
    assert set(result.stage_seconds) == set(names)
    assert "on 2 Ray actors" in stage_lines[3]

    version = mlflow.MlflowClient().get_model_version_by_alias("demo-under-test", "champion")
    assert result.model == "models:/demo-under-test@champion" and str(version.version) == "1"

    # the printed accuracy is the unseen scene's, recomputed here from the two rasters
    truth_path = tmp_path / "demo/unseen/sample_labels.tif"
    with rasterio.open(result.output) as out, rasterio.open(truth_path) as ref:
        predicted, truth = out.read(1), ref.read(1)
        keep = (truth != LABEL_NODATA) & (predicted != out.nodata)
    assert result.pixels == int(keep.sum()) > 0
    assert result.accuracy == np.mean(predicted[keep] == truth[keep])
    assert result.preview.is_file() and result.preview.stat().st_size > 0
    assert (tmp_path / "demo/unseen_classes.regions.csv").is_file()
    assert (tmp_path / "demo/unseen_classes.qml").is_file()
    assert result.vector.is_file() and result.vector.stat().st_size > 0
