"""The band-stack chain on a generated scene, so it runs in a user's clone too (the Landsat test
of ``test_training_real_data.py`` needs ``../shared``): train on single-band files (one at twice
the pixel size) → register → promote with the same stack as evaluation image → segment the stack
from ``models:/NAME@champion`` with per-region metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pipeline.demos.sample_scene import write_sample_scene
from pipeline.inputs.raster import inspect_raster
from pipeline.training.settings import TrainSettings
from tests.conftest import write_raster


def _stack_of(tmp_path: Path) -> tuple[str, Path]:
    """The sample scene's bands as ``B1.tif,B2.tif,…`` (B2 at twice the pixel size, named by
    band description) and its label raster."""
    scene = write_sample_scene(tmp_path / "scene", 192, seed=4)
    with rasterio.open(scene.image) as src:
        image, profile = src.read(), src.profile
    transform, crs = profile["transform"], str(profile["crs"])
    files = []
    for b, band in enumerate(image, start=1):
        if b == 2:
            coarse = band.reshape(96, 2, 96, 2).mean(axis=(1, 3)).astype(band.dtype)
            t = Affine(transform.a * 2, 0, transform.c, 0, transform.e * 2, transform.f)
            files.append(write_raster(tmp_path / f"B{b}.tif", coarse[None], profile["nodata"], crs, t))
        else:
            files.append(write_raster(tmp_path / f"B{b}.tif", band[None], profile["nodata"], crs, transform))
    return ",".join(map(str, files)), scene.labels


def test_generated_stack_train_promote_segment_from_the_registry(tmp_path):
    from flows.cli import main
    from flows.promote_model import promote_model
    from flows.train_model import train_model

    bands, labels = _stack_of(tmp_path)
    settings = TrainSettings(
        arch="unet", arch_config={"width": 4, "depth": 2}, tile=64, batch_size=2, epochs=1,
        steps_per_epoch=2, device="cpu",
    )  # fmt: skip
    report = train_model([bands], [str(labels)], "generated-stack", settings, work_dir=tmp_path / "train")
    assert report.outcome.card.band_names == [f"B{b}" for b in range(1, len(bands.split(",")) + 1)]
    assert report.outcome.card.gsd is not None
    decision = promote_model("generated-stack", report.version.version, bands, str(labels))
    assert decision.action == "first" and decision.candidate_score is not None

    first = inspect_raster(bands.split(",")[0])
    x0, y1, step = first.transform[2], first.transform[5], first.transform[0] * 96
    square = [[x0, y1], [x0 + step, y1], [x0 + step, y1 - step], [x0, y1 - step], [x0, y1]]
    feature = {"type": "Feature", "properties": {"name": "north-west"}}
    feature["geometry"] = {"type": "Polygon", "coordinates": [square]}
    crs = {"properties": {"name": first.crs_wkt}}
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [feature]}))
    out = tmp_path / "classes.tif"
    argv = ["segment", bands, "-m", "models:/generated-stack@champion", "-o", str(out), "--quiet"]
    assert main([*argv, "--labels", str(labels), "--regions", str(regions)]) == 0
    table = (tmp_path / "classes.regions.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("north-west,") and "miou" in table[0]
    with rasterio.open(out) as got, rasterio.open(labels) as truth:
        assert (got.crs, got.transform, got.shape) == (truth.crs, truth.transform, truth.shape)
        assert np.isin(np.unique(got.read(1)), [*range(8), got.nodata]).all()
