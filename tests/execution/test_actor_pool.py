"""One actor pool, many scenes: a real private Ray, scenes submitted from several threads at once.

Each scene's output is compared byte for byte with the in-process run of the same job.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray

from pipeline.execution.block_queue import BlockFailedError
from pipeline.execution.heap_allocator import tcmalloc_library
from pipeline.execution.pool_plan import plan_pool
from pipeline.execution.ray_pool import ActorPool
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import export, prepare, segment
from tests.conftest import write_raster

# torch CPU kernels round differently with other thread counts (~1e-7): compare like with like.
SETTINGS = {"tile": 64, "block": 128, "chunk": 128, "quiet": True, "threads": 1}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def private_ray():
    if ray.is_initialized():  # a Ray an earlier test in this worker left connected is not this one
        ray.shutdown()
    # "local": a new cluster even when another test worker's Ray runs on this machine (a bare
    # ray.init() would join that one, and refuses num_cpus when it does).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _scene(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    data = (rng.random((3, 256, 256)) * 3000 + 100).astype(np.uint16)
    data[:, :40, :30] = 0
    return write_raster(path, data, nodata=0)


def _config(scene: Path, model: Path, out: Path) -> SegmentConfig:
    return SegmentConfig(input=scene, model=str(model), output=out, **SETTINGS)


def test_scenes_share_one_pool_load_the_model_once_and_a_corrupt_one_fails_alone(
    private_ray, tiny_checkpoint, tmp_path, monkeypatch
):
    scenes = [_scene(tmp_path / f"s{i}.tif", i) for i in range(4)]
    references = []
    for i, s in enumerate(scenes[:3]):
        references.append(segment(_config(s, tiny_checkpoint, tmp_path / f"ref{i}.tif")).output.read_bytes())

    jobs = [prepare(_config(s, tiny_checkpoint, tmp_path / f"pool{i}.tif")) for i, s in enumerate(scenes)]
    assert jobs[3].scene.source is not None  # read in place from its GeoTIFF
    os.truncate(scenes[3], scenes[3].stat().st_size // 2)  # the fourth scene cannot be read

    # set after Ray started, so only what the pool hands its workers can carry it there
    monkeypatch.setenv("GOMP_SPINCOUNT", "1234")
    pool = ActorPool(plan_pool(ray.cluster_resources(), 2, "cpu", 1), "cpu")
    try:
        with ThreadPoolExecutor(4) as threads:  # all four scenes in flight at once
            runs = [threads.submit(pool.run, job) for job in jobs]
            counts = [r.result() for r in runs[:3]]
            with pytest.raises(BlockFailedError, match=r"s3.tif: block \[\d, \d\] .* cannot be read"):
                runs[3].result()
        later = prepare(_config(scenes[0], tiny_checkpoint, tmp_path / "later.tif"))
        assert pool.run(later) == (4, 0), "the pool goes on serving after a scene failed"
        actors = pool.describe()
    finally:
        pool.close()

    assert counts == [(4, 0)] * 3
    for i, job in enumerate(jobs[:3]):
        assert export(job).labels.read_bytes() == references[i]
    assert export(later).labels.read_bytes() == references[0]
    assert len(actors) == 2
    # each actor loads the model once, at its first block (one may take every block of a small scene)
    assert all(a["models_loaded"] == (1 if a["scenes_attached"] else 0) for a in actors)
    assert sum(a["scenes_attached"] for a in actors) >= 5, "each actor served several scenes"
    assert all(a["openmp_waiting"] == {"GOMP_SPINCOUNT": "1234"} for a in actors), "the driver's setting"
    # the test's own process (and the Ray it started) runs on the system allocator: the workers'
    # TCMalloc comes from the pool's runtime environment alone
    expected = "tcmalloc" if tcmalloc_library() else "system"
    assert [a["allocator"] for a in actors] == [expected] * len(actors)
