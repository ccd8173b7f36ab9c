"""The main job as a Prefect flow: check → ingest → resample → plan → infer (+ CRF) → map back → export.

Runnable as a script with the same arguments as ``gigaseg segment`` (this is what
``ray submit ray_cluster.yaml flows/segment_scene.py -- ARGS`` runs on a cluster
head). Each stage is a task over the plain functions of :mod:`pipeline.job.steps`,
so the flow's result is the library's result. Tasks retry transient failures
(I/O hiccups, a lost worker) but never input errors, which fail the run at once
with the stage named. CRF refinement runs inside each block's inference (it needs
the block's halo), so it is part of the infer stage rather than a pass of its own.

Blocks run where :func:`pipeline.execution.placement.place_blocks` says: with
``workers`` (or ``$GIGASEG_WORKERS``) set, on that many Ray actors (0: in this
process); otherwise on Ray only for a cluster (``--ray-address`` / ``RAY_ADDRESS``),
several GPUs or a large scene, and in this process for anything small.

``segment_scenes_flow`` runs many scenes as one batch (:mod:`pipeline.execution.scene_batch`):
each scene is this flow as a subflow (its own outputs and MLflow run), a few at a time,
all on one actor pool that loads the model once; a failing scene is reported, the others finish.
"""

import os
import sys
import time
from collections.abc import Callable, Sequence

from flows.prefect_runtime import configure_prefect
from flows.prefect_server import use_prefect_api
from flows.script import restart_on_chosen_allocator

if __name__ == "__main__":  # run as a script: start over on TCMalloc before torch and Prefect load
    restart_on_chosen_allocator()

# Before Prefect is imported: run as a script (`ray submit … flows/segment_scene.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.errors import InputError, expected_failure
from pipeline.execution.placement import place_blocks
from pipeline.execution.scene_batch import BatchReport, SceneBatch, active_batch
from pipeline.exporters.formats import ExportedOutputs
from pipeline.inputs.resampling import resampling_for
from pipeline.job.checks import CheckedInput, check_inputs
from pipeline.job.config import SegmentConfig
from pipeline.job.map_back import map_back
from pipeline.job.model_source import load_model
from pipeline.job.plan import Job, plan_job
from pipeline.job.steps import BlockRunner, export, finish, infer, ingest_scene, output_set, resample
from pipeline.job.summary import BlockCounts, SegmentSummary, summarize
from pipeline.stores.scene import SceneStore
from pipeline.stores.transfer import OutputSet
from pipeline.tracking.segment_run import check_reference_files, check_reference_grid
from pipeline.watch.ledger import failure_reason

WORKERS_ENV = "GIGASEG_WORKERS"
"""Default for ``--workers`` when neither the option nor the config sets it."""


def resolved_workers(config: SegmentConfig) -> int | None:
    """``config.workers``, else ``$GIGASEG_WORKERS``, else None (placement decides, Ray sizes the pool)."""
    return workers_or_env(config.workers)


def workers_or_env(workers: int | None) -> int | None:
    """``workers``, else ``$GIGASEG_WORKERS``, else None (placement decides, Ray sizes the pool)."""
    if workers is not None:
        return workers
    env = os.environ.get(WORKERS_ENV, "").strip()
    return int(env) if env else None


def block_runner(job: Job) -> BlockRunner | None:
    """Where the job's blocks run: the batch's pool in a batch, else Ray or this process (None)."""
    import torch

    batch = active_batch()
    if batch is not None:
        return batch.run_blocks if batch.uses_ray else None
    config, pending = job.config, job.store.pending(job.plan)
    workers = resolved_workers(config)
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    pixels = sum(b.num_pixels for b in pending)
    gpus = torch.cuda.device_count() if config.device != "cpu" else 0
    placement = place_blocks(
        workers, address, gpus, pixels, len(pending), config.device, per_gpu=config.workers_per_gpu
    )
    if not placement.on_ray:
        return None
    from pipeline.execution.ray_pool import RayBlockRunner

    return RayBlockRunner(workers=workers, address=config.ray_address)


def retry_transient(task, task_run, state) -> bool:
    """Retry only failures that a second try could fix: never the input's fault."""
    try:
        state.result()
    except Exception as exc:
        return expected_failure(exc) is None
    return False


STAGE = {"cache_policy": NONE, "persist_result": False}
RETRYING = {**STAGE, "retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_transient}


@task(name="check", **STAGE)
def check_stage(config: SegmentConfig) -> CheckedInput:
    """Options, input header and model (loaded once per batch), before any data is read."""
    batch = active_batch()
    return check_inputs(config, load=batch.models.load if batch is not None else load_model)


@task(name="ingest", **RETRYING)
def ingest_stage(config: SegmentConfig, checked: CheckedInput) -> SceneStore:
    """The chunked scene store; an unchanged input (same content id) is not copied again."""
    return ingest_scene(config, checked)


@task(name="resample", **RETRYING)
def resample_stage(config: SegmentConfig, checked: CheckedInput, scene: SceneStore) -> SceneStore:
    """The scene at the model's resolution (the ingested one if it is, or with ``--native-resolution``)."""
    return resample(config, checked, scene)


@task(name="plan", **STAGE)
def plan_stage(
    config: SegmentConfig, checked: CheckedInput, scene: SceneStore, input_scene: SceneStore
) -> Job:
    """Tile grid, blocks and the output store (resumes a matching earlier run)."""
    return plan_job(config, checked, scene, input_scene=input_scene)


@task(name="infer", **RETRYING)
def infer_stage(job: Job) -> BlockCounts:
    """Every pending block, here or on Ray (:func:`block_runner`; a retry skips the blocks already done)."""
    return infer(job, block_runner(job))


@task(name="map-back", **RETRYING)
def map_back_stage(job: Job) -> Job:
    """A resampled run's outputs on the input's own grid (a run at the model's resolution as it is)."""
    return map_back(job)


@task(name="export", **RETRYING)
def export_stage(job: Job, outputs: OutputSet) -> ExportedOutputs:
    """The outputs of the finished store, at their staged names (published when the run is done)."""
    return export(job, outputs)


@task(name="metrics", **STAGE)
def metrics_stage(
    job: Job,
    outputs: ExportedOutputs,
    counts: BlockCounts,
    seconds: float,
    on_finished: Callable[[Job], None] | None,
) -> SegmentSummary:
    """Class fractions and, when tracked, the per-region table."""
    return summarize(job, outputs, counts, seconds, on_finished)


@task(name="publish", **STAGE)
def publish_stage(config: SegmentConfig, outputs: OutputSet) -> None:
    """Every output of the run appears under its final name together; then the work folder goes."""
    finish(config, outputs)


def run_stages(
    config: SegmentConfig,
    on_finished: Callable[[Job], None] | None = None,
    outputs: OutputSet | None = None,
) -> SegmentSummary:
    """The stages as tasks of the current flow run (same signature as :func:`pipeline.job.steps.segment`)."""
    t0 = time.perf_counter()
    staged = outputs or output_set(config)
    try:
        checked = check_stage(config)
        t_ingest = time.perf_counter()
        scene = ingest_stage(config, checked)
        # Resampling and mapping back are tasks only when the run is resampled: each
        # task run is bookkeeping the Prefect server does on the job's cores.
        resampled = resampling_for(checked.card, scene.attrs, config.native_resolution) is not None
        model_scene = resample_stage(config, checked, scene) if resampled else scene
        job = plan_stage(config, checked, model_scene, scene)
        job.timings["ingest"] = time.perf_counter() - t_ingest
        counts = infer_stage(job)
        if job.resampling is not None:
            job = map_back_stage(job)
        exported = export_stage(job, staged)
        summary = metrics_stage(job, exported, counts, time.perf_counter() - t0, on_finished)
    except BaseException:
        staged.discard()
        raise
    if outputs is None:
        publish_stage(config, staged)
    return summary


@flow(name="segment-scene", log_prints=True)
def segment_scene_flow(
    config: SegmentConfig, labels: str | None = None, regions: str | None = None, track: bool = True
) -> SegmentSummary:
    """Segment ``config.input`` into ``config.output``.

    ``track``: the run is also an MLflow run with per-region metrics (per block,
    or per polygon of ``regions``; scored against ``labels`` when given).
    """
    if not track:
        return run_stages(config)
    from pipeline.tracking.segment_run import track_segment_run

    return track_segment_run(config, labels=labels, regions=regions, run=run_stages).summary


def segment_scene(
    config: SegmentConfig,
    labels: str | os.PathLike[str] | None = None,
    regions: str | os.PathLike[str] | None = None,
    track: bool = True,
) -> SegmentSummary:
    """Run the flow; bad options fail here, before any Prefect API is found or started."""
    if not track and (labels is not None or regions is not None):
        raise InputError("--labels and --regions need tracking (drop --no-track)")
    check_reference_files(labels, regions)
    config.validate()
    check_reference_grid(config, labels, regions)
    use_prefect_api()
    return segment_scene_flow(
        config,
        labels=None if labels is None else os.fspath(labels),
        regions=None if regions is None else os.fspath(regions),
        track=track,
    )


@task(name="segment-batch-scene", **STAGE)
def batch_scene_stage(config: SegmentConfig, track: bool) -> SegmentSummary:
    """One scene of a batch, as its own flow run (and MLflow run)."""
    name = config.input.name
    return segment_scene_flow.with_options(flow_run_name=f"segment {name}")(config, track=track)


@flow(name="segment-scenes", log_prints=True)
def segment_scenes_flow(configs: list[SegmentConfig], track: bool = True) -> BatchReport:
    """Segment each config's input into its output: one batch, one actor pool, failures kept apart."""
    t0 = time.perf_counter()
    first = configs[0] if configs else None
    batch = SceneBatch(workers_or_env(first and first.workers), first and first.ray_address)
    with batch, ThreadPoolTaskRunner(max_workers=batch.scenes_in_flight) as runner:
        futures = [
            runner.submit(batch_scene_stage, parameters={"config": c, "track": track}) for c in configs
        ]
        wait(futures)
    report = BatchReport(actors=batch.actors, models_loaded=batch.models.loads)
    for config, future in zip(configs, futures):
        if future.state.is_completed():
            report.done.append(future.result())
        else:
            report.failed.append(
                (str(config.input), failure_reason(future.state.result(raise_on_failure=False)))
            )
    report.seconds = time.perf_counter() - t0
    return report


def segment_scenes(configs: Sequence[SegmentConfig], track: bool = True) -> BatchReport:
    """Run the batch flow; options that are wrong for every scene fail here, before Prefect starts."""
    if not configs:
        raise InputError("no inputs to segment")
    for config in configs:
        config.validate_options()
    use_prefect_api()
    return segment_scenes_flow(list(configs), track=track)


def main(argv: Sequence[str] | None = None) -> int:
    """``python flows/segment_scene.py ARGS``: exactly ``gigaseg segment ARGS``."""
    from flows import commands
    from flows.arguments import add_segment_arguments
    from flows.script import run_script

    # This module's own flow: run as a script, it is ``__main__`` and must not be imported again.
    this_flow = sys.modules[__name__]
    return run_script("segment", add_segment_arguments, lambda args: commands.segment(args, this_flow), argv)


if __name__ == "__main__":
    sys.exit(main())
