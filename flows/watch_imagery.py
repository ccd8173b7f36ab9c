"""Scheduled processing of new imagery: segment every new or changed scene in a location exactly once.

``process_new_imagery`` scans a folder (or any fsspec URL such as ``s3://bucket/scenes``
when the matching filesystem package is installed) for files matching a pattern,
looks each one up in the ledger kept in the output folder (content identity, so
renames are not reprocessed and edits are; and the settings, so a changed model or
option reprocesses), and segments what is new, a bounded
number at a time, all of a scan on one actor pool that loads the model once
(:class:`~pipeline.execution.scene_batch.SceneBatch`). A scene that fails (a corrupt
file) is recorded and reported; the others finish. ``gigaseg watch`` runs it once
(``--once``) or serves it on a schedule; ``infra/prefect.yaml`` deploys it to a work pool.

Scanning, the ledger, the report and the option checks live in :mod:`pipeline.watch`;
this module runs them as a flow with one task per scene. Runnable as a script:
``python flows/watch_imagery.py INPUT --output-dir OUT -m MODEL``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from flows.prefect_runtime import configure_prefect
from flows.script import restart_on_chosen_allocator

if __name__ == "__main__":  # run as a script: start over on TCMalloc before torch and Prefect load
    restart_on_chosen_allocator()

# Before Prefect is imported: run as a script (`ray submit … flows/watch_imagery.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.segment_scene import segment_scene_flow, workers_or_env
from pipeline.execution.scene_batch import SceneBatch
from pipeline.exporters.stac import add_to_catalog
from pipeline.stores.location import Where, location
from pipeline.watch.ledger import open_ledger
from pipeline.watch.report import WatchReport
from pipeline.watch.scan import DOWNLOADS, Scene, new_or_changed, scan, scene_input
from pipeline.watch.settings import WatchSettings, scene_config, segment_options, settings_id


@task(name="segment-new-scene", cache_policy=NONE, persist_result=False)
def segment_new_scene(scene: Scene, output: Where, model: str, options: dict[str, Any], settings: str) -> str:
    """Segment one scene into ``output``, recording start, outcome and ``settings`` in its folder's ledger.

    A remote raster is read in place; a remote volume is copied to scratch space beside a
    local output (a private temporary folder when the output is on object storage).
    """
    ledger = open_ledger(output.parent)
    recorded = ledger.processing(scene.url, scene.content_id, str(output), settings)
    scratch = output.parent / DOWNLOADS if isinstance(output, Path) else None
    with recorded, scene_input(scene, scratch, options.get("spacing")) as source:
        config = scene_config(source, model, output, options)
        segment_scene_flow.with_options(flow_run_name=f"segment {scene.relative}")(config)
    return str(output)


@flow(name="watch-imagery", validate_parameters=True)
def process_new_imagery(
    input_url: str,
    output_dir: str,
    model: str,
    pattern: str = WatchSettings.pattern,
    max_concurrent: int | None = WatchSettings.max_concurrent,
    min_age_seconds: float = WatchSettings.min_age_seconds,
    options: dict[str, Any] | None = None,
) -> WatchReport:
    """Segment each new or changed scene under ``input_url`` into ``output_dir`` exactly once."""
    t0 = time.perf_counter()
    logger = get_run_logger()
    opts = segment_options(options)
    out_dir = location(output_dir).resolve()
    ledger = open_ledger(out_dir)
    settings = settings_id(model, opts)
    scenes = scan(input_url, pattern, ledger, min_age_seconds, exclude=str(out_dir))
    todo = new_or_changed(scenes, ledger, settings)
    report = WatchReport(unchanged=len(scenes) - len(todo))
    logger.info("%d scene(s) found, %d new or changed", len(scenes), len(todo))
    batch = SceneBatch(workers_or_env(opts.get("workers")), opts.get("ray_address"), max_concurrent)
    with batch, ThreadPoolTaskRunner(max_workers=max(1, batch.scenes_in_flight)) as runner:
        futures = {
            s: runner.submit(
                segment_new_scene,
                parameters={
                    "scene": s,
                    "output": s.output_in(out_dir),
                    "model": model,
                    "options": opts,
                    "settings": settings,
                },
            )
            for s in todo
        }
        wait(list(futures.values()))
    for scene, future in futures.items():
        state = future.state
        if state.is_completed():
            report.add_processed(scene.url, future.result())
        else:
            reason = report.add_failed(scene.url, state.result(raise_on_failure=False))
            logger.error("%s: %s", scene.url, reason)
    add_to_catalog(out_dir, [location(output) for _, output in report.processed])
    report.actors = batch.actors
    report.seconds = time.perf_counter() - t0
    logger.info(report.line())
    return report


if __name__ == "__main__":
    from flows import commands
    from flows.arguments import add_watch_arguments
    from flows.script import run_script

    this_flow = sys.modules[__name__]
    sys.exit(run_script("watch", add_watch_arguments, lambda args: commands.watch(args, this_flow)))
