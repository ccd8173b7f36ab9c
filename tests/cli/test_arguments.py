"""The command line's defaults are the config dataclasses' own (one source of defaults)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from flows.arguments import (
    ENGINE_HELP,
    ENGINE_OPTIONS,
    INTERNAL_FIELDS,
    JOB_OPTIONS,
    TRAIN_OPTIONS,
    add_promote_arguments,
    add_segment_arguments,
    add_train_arguments,
    add_watch_arguments,
    engine_options_given,
    field_default,
    segment_config_from_args,
    train_settings_from_args,
)
from pipeline.engine.crf import CRFParams
from pipeline.job.config import SegmentConfig
from pipeline.tracking.promotion import EvaluationScene
from pipeline.training.settings import TrainSettings
from pipeline.watch.settings import WatchSettings


def _parse(add_arguments, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


SEGMENT = ("scene.tif", "-m", "arch:conv1x1", "-o", "out.tif")
WATCH = ("inbox", "--output-dir", "out", "-m", "arch:conv1x1")


def test_every_segment_config_field_is_an_option_or_named_internal() -> None:
    names = {f.name for f in dataclasses.fields(SegmentConfig)}
    assert set(ENGINE_OPTIONS) | set(JOB_OPTIONS) | INTERNAL_FIELDS == names
    assert set(ENGINE_HELP) == set(ENGINE_OPTIONS)


def test_segment_defaults_are_segment_configs() -> None:
    args = _parse(add_segment_arguments, *SEGMENT)
    assert segment_config_from_args(args) == SegmentConfig(
        input="scene.tif", model="arch:conv1x1", output="out.tif"
    )


def test_crf_defaults_are_the_crfs_own() -> None:
    config = SegmentConfig(input="a.tif", model="arch:conv1x1", output="b.tif")
    for name in ("iterations", "radius", "smooth_weight", "smooth_sigma", "appearance_weight",
                 "appearance_sigma_pos", "appearance_sigma_feat"):  # fmt: skip
        assert getattr(config, f"crf_{name}") == field_default(CRFParams, name), name


@pytest.mark.parametrize(
    ("argv", "given"),
    [
        ((), {}),
        (("--overlap", "0.5", "--no-channels-last"), {"overlap": 0.5, "channels_last": False}),
        (("--overlap", "0.25", "--crf-bands", "3,2,1"), {"crf_bands": (3, 2, 1)}),
    ],
)
def test_watch_passes_on_only_the_engine_options_that_differ_from_the_defaults(argv, given) -> None:
    assert engine_options_given(_parse(add_watch_arguments, *WATCH, *argv)) == given


def test_train_defaults_are_train_settings() -> None:
    args = _parse(add_train_arguments, "img.tif", "--labels", "lab.tif")
    assert train_settings_from_args(args, {}) == TrainSettings()
    assert set(TRAIN_OPTIONS) <= {f.name for f in dataclasses.fields(TrainSettings)}


def test_watch_and_promote_defaults_are_their_settings() -> None:
    watch = _parse(add_watch_arguments, "in/", "--output-dir", "out/", "-m", "arch:unet")
    assert (watch.pattern, watch.max_concurrent, watch.min_age) == (
        WatchSettings.pattern,
        WatchSettings.max_concurrent,
        WatchSettings.min_age_seconds,
    )
    promote = _parse(add_promote_arguments, "landcover")
    assert (promote.metric, promote.block) == (EvaluationScene.metric, EvaluationScene.block)


def test_train_options_reach_the_settings() -> None:
    args = _parse(add_train_arguments, "img.tif", "--labels", "lab.tif", "--epochs", "3", "--lr", "0.01",
                  "--backbone-weights", "bb.safetensors", "--amp")  # fmt: skip
    settings = train_settings_from_args(args, {"width": 16})
    assert (settings.epochs, settings.lr, settings.amp) == (3, 0.01, True)
    assert (settings.backbone_weights, settings.arch_config) == ("bb.safetensors", {"width": 16})
