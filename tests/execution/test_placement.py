"""Ray only where it pays: the default placement of a job's blocks, and the flow following it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.segment_scene import WORKERS_ENV, block_runner
from pipeline.execution.placement import RAY_MIN_PIXELS, place_blocks
from pipeline.execution.ray_pool import RayBlockRunner
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import prepare
from tests.conftest import write_raster

SMALL = {"gpus": 0, "pending_pixels": 1_000_000, "pending_blocks": 16}


def test_explicit_workers_decide_alone() -> None:
    assert place_blocks(3, None, **SMALL).on_ray
    assert not place_blocks(0, None, gpus=8, pending_pixels=10**10, pending_blocks=10**4).on_ray
    assert not place_blocks(0, "ray://head:10001", **SMALL).on_ray


def test_a_small_scene_on_one_machine_runs_in_this_process() -> None:
    assert not place_blocks(None, None, **SMALL).on_ray
    assert not place_blocks(None, None, gpus=1, pending_pixels=10**6, pending_blocks=16).on_ray


def test_a_cluster_address_several_gpus_or_a_large_scene_use_ray() -> None:
    assert place_blocks(None, "10.0.0.1:6379", **SMALL).on_ray
    assert place_blocks(None, None, gpus=2, pending_pixels=10**6, pending_blocks=16).on_ray
    assert place_blocks(None, None, gpus=0, pending_pixels=RAY_MIN_PIXELS, pending_blocks=64).on_ray
    assert not place_blocks(None, None, gpus=0, pending_pixels=RAY_MIN_PIXELS - 1, pending_blocks=64).on_ray


def test_gpus_the_run_may_not_use_do_not_call_for_ray() -> None:
    for device in ("cpu", "cuda:1"):
        assert not place_blocks(None, None, **{**SMALL, "gpus": 4}, device=device).on_ray


def test_one_pending_block_never_starts_ray_by_default() -> None:
    assert not place_blocks(None, None, gpus=4, pending_pixels=10**9, pending_blocks=1).on_ray


def test_the_threshold_is_configurable_for_callers() -> None:
    assert place_blocks(None, None, gpus=0, pending_pixels=10, pending_blocks=2, min_pixels=10).on_ray


@pytest.fixture
def job_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rng = np.random.default_rng(0)
    scene = write_raster(tmp_path / "s.tif", (rng.random((3, 128, 128)) * 3000 + 100).astype(np.uint16))

    def config(**extra) -> SegmentConfig:
        return SegmentConfig(
            input=scene, model="arch:conv1x1", num_classes=2, output=tmp_path / "o.tif", tile=64, block=64,
            chunk=64, quiet=True, work_dir=tmp_path / "w", **extra,
        )  # fmt: skip

    return config


def test_the_flow_runs_a_small_job_here_unless_told_otherwise(job_config, monkeypatch) -> None:
    assert block_runner(prepare(job_config())) is None
    assert isinstance(block_runner(prepare(job_config(workers=2))), RayBlockRunner)
    assert isinstance(block_runner(prepare(job_config(ray_address="10.0.0.1:6379"))), RayBlockRunner)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert isinstance(block_runner(prepare(job_config())), RayBlockRunner)
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert block_runner(prepare(job_config())) is None
