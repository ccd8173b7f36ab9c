"""A scene far from the model's resolution is refused with one line; a near one is resampled.

Resampling itself: ``tests/job/test_resampling.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from models.checkpoint import ModelCard
from pipeline.errors import InputError
from pipeline.inputs.formats import describe_input
from pipeline.inputs.resampling import Resampling, resampling_for
from pipeline.inputs.resolution import check_resolution, training_resolution
from tests.cli.bad_input_cases import _write


@pytest.fixture
def scene_attrs(tmp_path):
    """A 10 m/px UTM raster, as ingest describes it."""
    _write(tmp_path / "s.tif", np.zeros((3, 64, 64), np.uint16))  # EPSG:32633, 10 m pixels
    return describe_input(tmp_path / "s.tif").raster.attrs()


def _card(**resolution) -> ModelCard:
    return ModelCard("unet", {"in_channels": 3, "num_classes": 2}, ["a", "b"], **resolution)


def test_a_scene_at_the_models_resolution_runs_silently(scene_attrs, caplog):
    with caplog.at_level(logging.WARNING, logger="gigaseg"):
        check_resolution(_card(gsd=10.2), scene_attrs, "s.tif")
        check_resolution(_card(), scene_attrs, "s.tif")  # a card without a resolution: nothing to check
    assert not caplog.records


def test_a_scene_at_twice_the_models_gsd_is_resampled_unless_native_resolution_which_says_so(
    scene_attrs, caplog
):
    assert resampling_for(_card(gsd=5.0), scene_attrs) == Resampling("m/px", (10.0,), (5.0,))
    assert resampling_for(_card(gsd=10.2), scene_attrs) is None  # within the tolerance
    assert resampling_for(_card(gsd=5.0), scene_attrs, native=True) is None
    with caplog.at_level(logging.WARNING, logger="gigaseg"):
        check_resolution(_card(gsd=5.0), scene_attrs, "s.tif")  # resampled: the resampling says so
        assert not caplog.records
        check_resolution(_card(gsd=5.0), scene_attrs, "s.tif", native=True)
    assert [r.getMessage() for r in caplog.records] == [
        "s.tif: at 10 m/px, the model was trained at 5 m/px; "
        "labels are computed at the scene's own resolution (--native-resolution)"
    ]


def test_a_scene_twenty_times_coarser_is_one_line_unless_native_resolution(scene_attrs):
    with pytest.raises(InputError) as err:
        check_resolution(_card(gsd=0.5), scene_attrs, "s.tif")
    assert str(err.value) == (
        "s.tif: at 10 m/px, the model was trained at 0.5 m/px (20.0× apart, over 4×); "
        "give --native-resolution to run anyway"
    )
    check_resolution(_card(gsd=0.5), scene_attrs, "s.tif", native=True)


def test_a_volume_model_compares_voxel_spacing():
    volume = {"kind": "volume", "spacing": [1.0, 1.0, 1.0]}
    check_resolution(_card(spacing=[2.0, 2.0, 2.0]), volume, "v.nii.gz")  # 2×: runs, resampled
    assert resampling_for(_card(spacing=[2.0, 2.0, 2.0]), volume).factors(3) == (2.0, 2.0, 2.0)
    with pytest.raises(InputError, match=r"at 1,1,1 mm, the model was trained at 5,5,5 mm"):
        check_resolution(_card(spacing=[5.0, 5.0, 5.0]), volume, "v.nii.gz")


def test_training_records_the_scenes_resolution(scene_attrs):
    assert training_resolution([scene_attrs, scene_attrs]) == {"gsd": 10.0}
    assert training_resolution([{"kind": "volume", "spacing": [2, 1, 1]}]) == {"spacing": [2.0, 1.0, 1.0]}
    assert training_resolution([{"kind": "raster", "crs": None, "transform": [1, 0, 0, 0, -1, 0]}]) == {}
