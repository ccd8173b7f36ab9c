"""The main job as a Prefect flow: check → ingest → plan → infer (+ CRF) → export → summary.

Runnable as a script with the same arguments as ``gigaseg segment`` (this is what
``ray submit ray_cluster.yaml flows/segment_scene.py -- ARGS`` runs on a cluster
head). Each stage is a task over the plain functions of :mod:`pipeline.segment`,
so the flow's result is the library's result. Tasks retry transient failures
(I/O hiccups, a lost worker) but never input errors, which fail the run at once
with the stage named. CRF refinement runs inside each block's inference (it needs
the block's halo), so it is part of the infer stage rather than a pass of its own.
"""

import sys
import time

from prefect import flow, task
from prefect.cache_policies import NONE

from pipeline.config import SegmentConfig
from pipeline.errors import InputError
from pipeline.scene_store import SceneStore
from pipeline.segment import (
    CheckedInput,
    Job,
    SegmentSummary,
    check_inputs,
    export,
    infer,
    ingest_scene,
    plan_job,
    summarize,
)


def retry_transient(task, task_run, state) -> bool:
    """Retry only failures that a second try could fix: never the input's fault."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return False


STAGE = {"cache_policy": NONE, "persist_result": False}
RETRYING = {**STAGE, "retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_transient}


@task(name="check", **STAGE)
def check_stage(config: SegmentConfig) -> CheckedInput:
    """Options, input header and model, before any data is read."""
    return check_inputs(config)


@task(name="ingest", **RETRYING)
def ingest_stage(config: SegmentConfig) -> SceneStore:
    """The chunked scene store; an unchanged input (same content id) is not copied again."""
    return ingest_scene(config)


@task(name="plan", **STAGE)
def plan_stage(config: SegmentConfig, checked: CheckedInput, scene: SceneStore) -> Job:
    """Tile grid, blocks and the output store (resumes a matching earlier run)."""
    return plan_job(config, checked, scene)


@task(name="infer", **RETRYING)
def infer_stage(job: Job) -> tuple[int, int]:
    """Every pending block (a retry skips the blocks already done)."""
    return infer(job)


@task(name="export", **RETRYING)
def export_stage(job: Job):  # -> tuple[Path, Path | None]
    """Cloud-optimised GeoTIFF(s) of the finished store."""
    return export(job)


@flow(name="segment-scene", log_prints=True)
def segment_scene_flow(config: SegmentConfig) -> SegmentSummary:
    """Segment ``config.input`` into ``config.output``."""
    t0 = time.perf_counter()
    checked = check_stage(config)
    t_ingest = time.perf_counter()
    scene = ingest_stage(config)
    job = plan_stage(config, checked, scene)
    job.timings["ingest"] = time.perf_counter() - t_ingest
    counts = infer_stage(job)
    outputs = export_stage(job)
    return summarize(job, outputs, counts, time.perf_counter() - t0)


def segment_scene(config: SegmentConfig) -> SegmentSummary:
    """Run the flow; bad options fail here, before Prefect starts anything."""
    config.validate()
    return segment_scene_flow(config)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["segment", *sys.argv[1:]]))
