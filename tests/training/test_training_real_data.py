"""Training on real labelled imagery: the Landsat 7 North Carolina bands as a stack of single-band
files (EPSG:32119) with a land-cover raster on the same grid but labelled EPSG:3358."""

from __future__ import annotations

import pytest

from pipeline.errors import InputError
from pipeline.inputs.band_stack import check_same_grid
from pipeline.inputs.raster import inspect_raster
from pipeline.training.data import open_pair, scan_classes
from pipeline.training.settings import TrainSettings
from pipeline.training.trainer import fit
from tests.conftest import write_raster

# 5 epochs × 8 steps of a 8-wide U-Net on 80% of a 489×443 scene; the majority class alone is
# below this, and the first epoch's mIoU is too.
MIOU_FLOOR = 0.1  # measured 0.14 (2-core CPU); 7 classes, tiny net, 40 steps

pytestmark = pytest.mark.shared_data


def _stack(shared_data):
    folder = shared_data / "satellite" / "landsat7_nc"
    bands = ",".join(str(folder / f"lsat7_2000_{b}.tif") for b in (10, 20, 30, 40, 50, 70))
    return bands, folder / "landclass96.tif"


def test_label_crs_code_differs_but_grid_coincides(shared_data):
    bands, labels = _stack(shared_data)
    first = inspect_raster(bands.split(",")[0])
    lab = inspect_raster(labels)
    assert first.crs_wkt != lab.crs_wkt
    check_same_grid(first, lab)  # accepted: the grids coincide


def test_label_on_another_grid_is_rejected(shared_data, tmp_path):
    bands, _ = _stack(shared_data)
    first = inspect_raster(bands.split(",")[0])
    import numpy as np
    from affine import Affine

    t = first.transform
    shifted = write_raster(
        tmp_path / "shifted.tif",
        np.zeros((1, first.height, first.width), np.uint8),
        crs="EPSG:3358",
        transform=Affine(t[0], t[1], t[2] + 3 * t[0], t[3], t[4], t[5]),
    )
    with pytest.raises(InputError, match=r"shifted\.tif"):
        check_same_grid(first, inspect_raster(shifted))


def test_training_on_landsat_stack_learns(shared_data, tmp_path):
    bands, labels = _stack(shared_data)
    scene, _ = open_pair(bands, labels, tmp_path / "stores", val_fraction=0.2)
    assert scene.image.num_bands == 6
    k = scan_classes([scene])
    assert k == 8  # classes 1–7; 0 unused
    settings = TrainSettings(
        arch="unet",
        arch_config={"width": 8, "depth": 2, "padding": "same", "batch_norm": True},
        tile=64,
        batch_size=6,
        epochs=5,
        steps_per_epoch=8,
        loss="ce+dice",
        balanced=True,
        device="cpu",
        patience=6,
    )
    out = fit([scene], settings, k, state_dir=tmp_path / "state")
    assert out.best.miou > MIOU_FLOOR
    assert out.best.miou > out.history[0].miou
    assert out.card.normalization["kind"] == "meanstd" and len(out.card.normalization["mean"]) == 6


def test_landsat_stack_train_promote_segment_from_the_registry(shared_data, tmp_path):
    """The stack a user trains on is the stack they promote with and segment: train → register →
    promote with the stack as evaluation image → segment it from ``models:/NAME@champion`` with
    per-region metrics against the land cover (tiny training: the chain, not the skill, is tested)."""
    import json

    from flows.cli import main
    from flows.promote_model import promote_model
    from flows.train_model import train_model

    bands, labels = _stack(shared_data)
    settings = TrainSettings(
        arch="unet", arch_config={"width": 4, "depth": 2}, tile=64, batch_size=2, epochs=1,
        steps_per_epoch=2, device="cpu",
    )  # fmt: skip
    report = train_model([bands], [str(labels)], "landsat-stack", settings, work_dir=tmp_path / "train")
    card = report.outcome.card
    assert card.band_names == [f"lsat7_2000_{b}" for b in (10, 20, 30, 40, 50, 70)]
    decision = promote_model("landsat-stack", report.version.version, bands, str(labels))
    assert decision.action == "first" and decision.candidate_score is not None
    first = inspect_raster(bands.split(",")[0])
    x0, y1 = first.transform[2], first.transform[5]
    west = [[x0, y1], [x0 + 6000, y1], [x0 + 6000, y1 - 6000], [x0, y1 - 6000], [x0, y1]]
    feature = {"type": "Feature", "properties": {"name": "north-west"}}
    feature["geometry"] = {"type": "Polygon", "coordinates": [west]}
    crs = {"properties": {"name": "EPSG:32119"}}
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [feature]}))
    out = tmp_path / "classes.tif"
    argv = ["segment", bands, "-m", "models:/landsat-stack@champion", "-o", str(out), "--quiet"]
    assert main([*argv, "--labels", str(labels), "--regions", str(regions)]) == 0
    table = (tmp_path / "classes.regions.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("north-west,") and "miou" in table[0]
