"""Blocks on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, fake GPUs).

One cluster for the module: a head without CPUs (so actors land on workers), a
node advertising 2 GPUs and one advertising 1. No CUDA here: actors must stay on
CPU although Ray assigns them GPU ids. Every run is compared byte for byte with
the in-process run of the same job.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from pipeline.execution.block_queue import BlockFailedError
from pipeline.execution.block_worker import BlockReport
from pipeline.execution.progress import Progress
from pipeline.execution.ray_pool import RayBlockRunner
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import export, prepare, segment
from tests._stop_at_state import gigaseg_stopping_after, wait_until_stopped
from tests.conftest import write_raster

ROOT = Path(__file__).resolve().parents[2]
# torch CPU kernels round differently with other thread counts (~1e-7): compare like with like.
SETTINGS = {"tile": 64, "block": 128, "chunk": 128, "quiet": True, "threads": 1}


class TerminalBuffer(io.StringIO):
    """Captures the progress bar as a terminal would show it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            # A removed node is noticed in ~5 s; a busy 2-core machine (the suite runs 2 workers) can
            # miss 2 s of health checks, which made a live node look dead (a spurious retry).
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
        },
    )
    nodes = [c.add_node(num_cpus=2, num_gpus=2), c.add_node(num_cpus=1, num_gpus=1)]
    c.wait_for_nodes()
    if ray.is_initialized():  # a private Ray an earlier in-process command left connected
        ray.shutdown()
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    data = (rng.random((3, 512, 512)) * 3000 + 100).astype(np.uint16)
    data[:, :70, :50] = 0  # a nodata corner
    return write_raster(tmp_path_factory.mktemp("ray_scene") / "scene.tif", data, nodata=0)


def _config(scene: Path, model: Path, out: Path, **kw) -> SegmentConfig:
    return SegmentConfig(
        input=scene,
        model=str(model),
        output=out,
        probabilities=out.with_suffix(".p.tif"),
        **{**SETTINGS, **kw},
    )


@pytest.fixture(scope="module")
def reference(scene, tiny_checkpoint, tmp_path_factory) -> tuple[bytes, bytes]:
    out = tmp_path_factory.mktemp("ray_ref") / "reference.tif"
    segment(_config(scene, tiny_checkpoint, out))
    return out.read_bytes(), out.with_suffix(".p.tif").read_bytes()


def _outputs(out: Path) -> tuple[bytes, bytes]:
    return out.read_bytes(), out.with_suffix(".p.tif").read_bytes()


def _run(config: SegmentConfig, runner: RayBlockRunner) -> tuple[int, int, TerminalBuffer, Progress]:
    job = prepare(config)
    stream = TerminalBuffer()
    progress = Progress(int(np.prod(job.grid.shape)), job.plan.num_blocks, "segment", stream=stream)
    try:
        run, skipped = runner(job, progress)
    finally:
        progress.close()
    export(job)
    return run, skipped, stream, progress


def test_actors_spread_over_nodes_with_distinct_gpus_and_match_in_process(
    cluster, scene, tiny_checkpoint, reference, tmp_path
):
    _, nodes = cluster
    out = tmp_path / "ray.tif"
    runner = RayBlockRunner()
    run, skipped, _, progress = _run(_config(scene, tiny_checkpoint, out), runner)
    assert (run, skipped) == (16, 0)
    assert runner.pool is not None and runner.pool.uses_gpus and runner.pool.actors == 3
    assert len(runner.actors) == 3
    placements = Counter(a["node_id"] for a in runner.actors)
    assert placements == Counter({nodes[0].node_id: 2, nodes[1].node_id: 1})
    gpus = {(a["node_id"], tuple(a["gpu_ids"])) for a in runner.actors}
    assert len(gpus) == 3 and all(len(g) == 1 for _, g in gpus)
    assert {g for n, g in gpus if n == nodes[0].node_id} == {("0",), ("1",)}
    for a in runner.actors:
        assert a["cuda_visible_devices"] == a["gpu_ids"][0]  # Ray pins the actor to its GPU
        assert a["device"] == "cpu", "no CUDA on this machine: a fake GPU must not select cuda"
    assert progress.blocks == 16 and progress.retries == 0
    assert _outputs(out) == reference


def test_actors_share_each_gpu_when_asked_and_match_in_process(
    cluster, scene, tiny_checkpoint, reference, tmp_path
):
    """``--workers-per-gpu 2``: two actors on each of the 3 GPUs, each asking Ray for half of one and
    fitting its batches to half of its memory; the same bytes as in process."""
    out = tmp_path / "shared.tif"
    runner = RayBlockRunner()
    run, skipped, _, _ = _run(_config(scene, tiny_checkpoint, out, workers_per_gpu=2), runner)
    assert (run, skipped) == (16, 0)
    assert runner.pool is not None and (runner.pool.actors, runner.pool.num_gpus) == (6, 0.5)
    per_gpu = Counter((a["node_id"], tuple(a["gpu_ids"])) for a in runner.actors)
    assert sorted(per_gpu.values()) == [2, 2, 2] and all(len(g) == 1 for _, g in per_gpu)
    assert {a["gpu_share"] for a in runner.actors} == {0.5}
    assert _outputs(out) == reference


def test_cpu_actors_fit_nodes_of_unequal_size_and_all_start(
    cluster, scene, tiny_checkpoint, reference, tmp_path
):
    """4 CPU actors over a 2-CPU and a 1-CPU node: the cluster's share (0.75 CPU each) fits only 3, and
    the fourth would wait for ever (and the run for its description). Each reserves 2/3 CPU instead."""
    out = tmp_path / "uneven.tif"
    runner = RayBlockRunner(workers=4)
    run, skipped, _, _ = _run(_config(scene, tiny_checkpoint, out, device="cpu"), runner)
    assert (run, skipped) == (16, 0)
    assert runner.pool is not None and (runner.pool.actors, runner.pool.num_cpus) == (4, 0.6666)
    assert len(runner.actors) == 4, "every actor started and answered"
    assert all(a["device"] == "cpu" for a in runner.actors)
    assert _outputs(out) == reference


def test_killed_actor_is_replaced_its_block_redone_and_the_retry_reported(
    cluster, scene, tiny_checkpoint, reference, tmp_path
):
    out = tmp_path / "killed.tif"
    killed: list[int] = []

    def kill_after_third(report: BlockReport) -> None:
        if len(killed) == 0 and runner.block_nodes and len(runner.block_nodes) == 3:
            os.kill(report.pid, signal.SIGKILL)  # it holds its read-ahead block right now
            killed.append(report.pid)

    runner = RayBlockRunner(workers=2, on_block=kill_after_third)
    run, _, stream, progress = _run(_config(scene, tiny_checkpoint, out), runner)
    assert killed and run == 16
    assert runner.retries >= 1 and progress.retries == runner.retries
    assert "retrying block" in stream.getvalue()
    assert f"retries {runner.retries}" in stream.getvalue()
    assert _outputs(out) == reference


@pytest.mark.parametrize("copied", [True, False], ids=["copied", "read in place"])
def test_unreadable_block_fails_the_run_naming_it_without_retrying(
    cluster, scene, tiny_checkpoint, tmp_path, copied
):
    source = tmp_path / "source.tif"
    shutil.copyfile(scene, source)
    config = _config(source, tiny_checkpoint, tmp_path / "corrupt.tif", copy_input=copied)
    job = prepare(config)
    if copied:
        chunk = job.scene.path / "image" / "c" / "0" / "1" / "2"
        assert chunk.is_file()
        chunk.write_bytes(b"not a compressed chunk")
    else:
        assert job.scene.source is not None
        os.truncate(source, source.stat().st_size // 2)  # the lower blocks' tiles are gone
    runner = RayBlockRunner(workers=2)
    named = "scene.zarr" if copied else "source.tif"
    with pytest.raises(BlockFailedError, match=rf"{named}: block \[\d, \d\] \(pixels .*\) cannot be read"):
        runner(job, None)
    assert runner.retries == 0
    assert not job.store.is_complete()


def test_driver_killed_mid_run_resumes_from_the_done_record(
    cluster, scene, tiny_checkpoint, reference, tmp_path
):
    c, _ = cluster
    out, work = tmp_path / "resumed.tif", tmp_path / "work"
    args = [
        "segment", str(scene), "-m", str(tiny_checkpoint), "-o", str(out),
        "--probabilities", str(out.with_suffix(".p.tif")), "--tile", "64", "--block", "128", "--chunk", "128",
        "--work-dir", str(work), "--workers", "2", "--ray-address", c.address, "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GIGASEG_WORKERS", None)
    done = work / "output.zarr" / "done" / "c"

    def done_blocks() -> int:
        """Blocks marked done; zarr writes each chunk to a ``.partial`` file first, which does not count."""
        if not done.exists():
            return 0
        return sum(1 for p in done.rglob("*") if p.is_file() and not p.name.endswith(".partial"))

    # Killed at a state, not a time: the driver freezes itself once its actors have reported two
    # blocks done (it hands out no more), however fast the machine.
    proc = gigaseg_stopping_after(2, args, env, ROOT)
    wait_until_stopped(proc, 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = done_blocks()
    assert 2 <= killed_at < 16 and not out.exists()

    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    resumed = int(result.stderr.split("block(s) resumed")[0].rsplit(", ", 1)[1])
    assert resumed >= killed_at
    assert _outputs(out) == reference


def test_node_leaving_mid_run_loses_no_block(cluster, scene, tiny_checkpoint, reference, tmp_path):
    """Last in the module: it takes a worker node away for good."""
    c, nodes = cluster
    out = tmp_path / "node_left.tif"
    removed: list[str] = []

    def remove_reporting_node(report: BlockReport) -> None:
        # The reporting actor holds its read-ahead block right now: that block is lost with the node.
        if not removed and len(runner.block_nodes) == 3:
            node = next(n for n in nodes if n.node_id == report.node_id)
            c.remove_node(node, allow_graceful=False)
            removed.append(node.node_id)

    runner = RayBlockRunner(on_block=remove_reporting_node)
    run, _, _, _ = _run(_config(scene, tiny_checkpoint, out), runner)
    assert removed and run == 16
    assert runner.retries >= 1
    assert removed[0] in set(runner.block_nodes.values())
    assert set(runner.block_nodes.values()) - set(removed), "the other node finished the job"
    assert _outputs(out) == reference


def test_input_work_folder_and_output_on_a_bucket_leave_no_local_files(
    cluster, scene, tiny_checkpoint, reference, bucket, tmp_path
):
    """Actors on other nodes open the stores by URL: nothing is shared through the local disk."""
    source = bucket / "scenes" / "scene.tif"
    source.fs.put_file(str(scene), source.url)
    out = bucket / "results" / "ray.tif"
    config = SegmentConfig(
        input=str(source),
        model=str(tiny_checkpoint),
        output=str(out),
        probabilities=str(out.with_name("ray.p.tif")),
        keep_work=True,
        **SETTINGS,
    )
    before = set(Path(os.getcwd()).iterdir())
    runner = RayBlockRunner()
    run, skipped, _, _ = _run(config, runner)
    assert (run, skipped) == (16, 0) and len(runner.block_nodes) == 16  # written by the actors
    assert set(Path(os.getcwd()).iterdir()) == before and not any(tmp_path.iterdir())
    keys = {k.split("/", 1)[1] for k in bucket.fs.find(bucket.url)}
    assert {"results/ray.tif", "results/ray.p.tif", "results/ray.tif.aux.xml"} <= keys
    assert any(k.startswith("results/ray.tif.gigaseg-work/output.zarr/done/") for k in keys)
    local = tmp_path / "got"
    local.mkdir()
    for name in ("ray.tif", "ray.p.tif"):
        out.fs.get_file(str(out.with_name(name)), str(local / name))
    assert ((local / "ray.tif").read_bytes(), (local / "ray.p.tif").read_bytes()) == reference


def test_a_scene_resampled_to_the_model_gsd_gives_the_in_process_outputs_on_ray_actors(
    cluster, scene, tmp_path
):
    from models.checkpoint import ModelCard, save_checkpoint
    from tests._varying_models import image_following_unet
    from tests.conftest import TINY_THRESHOLDS

    model = image_following_unet("unet", 3, TINY_THRESHOLDS, band_weights=(0.5, 0.3, 0.2), width=4, depth=2)
    card = ModelCard(
        arch="unet", config=model.config, class_names=["a", "b", "c", "d"], tile_size=64, gsd=15.0,
        normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5},
    )  # fmt: skip
    checkpoint = save_checkpoint(tmp_path / "at_15m.safetensors", model, card)
    alone = segment(_config(scene, checkpoint, tmp_path / "alone.tif"))
    on_ray = segment(_config(scene, checkpoint, tmp_path / "ray.tif"), run_blocks=RayBlockRunner(workers=2))
    assert alone.resampled == on_ray.resampled == "10 m/px → 15 m/px"
    assert _outputs(tmp_path / "ray.tif") == _outputs(tmp_path / "alone.tif")
