"""A segmentation job as an MLflow run: parameters, model version, timings, per-region metrics.

:func:`track_segment_run` wraps :func:`pipeline.job.steps.segment`. The
per-region table is computed from the finished output store (labels plus the
per-pixel confidence and entropy each block writes), logged as an MLflow table
and written beside the output as ``NAME.regions.geojson`` and
``NAME.regions.csv``; a preview PNG (image, classes, legend) is logged too.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.checkpoint import ModelCard
from pipeline.errors import InputError
from pipeline.evaluation.region_metrics import RegionTable, compute_region_table
from pipeline.exporters.formats import region_table_paths
from pipeline.job.config import SegmentConfig
from pipeline.job.plan import Job
from pipeline.job.steps import finish, output_set, segment
from pipeline.job.summary import SegmentSummary
from pipeline.stores.location import Where, check_readable, location
from pipeline.stores.transfer import OutputSet
from pipeline.tracking import runs as tracking
from pipeline.tracking.recorder import LocalRecorder, Recorder, take_helper


@dataclass
class TrackedSegment:
    """A finished, tracked segmentation."""

    summary: SegmentSummary
    run_id: str
    table: RegionTable | None
    """None for volumes (their run records per-label volumes instead)."""
    regions_csv: Path | None
    regions_geojson: Path | None

    @property
    def scene(self) -> dict[str, Any]:
        """Whole-scene statistics (accuracy, mIoU, … when labels were given)."""
        return self.table.scene_row() if self.table is not None else {}


def region_paths(output: Where) -> tuple[Where, Where]:
    """Where the per-region table goes beside ``output`` (CSV, GeoJSON)."""
    return region_table_paths(output)


def _source_tags(config: SegmentConfig) -> dict[str, str]:
    """The input's STAC item (id and location), when the scene is one."""
    from pipeline.inputs.stac_item import stac_source

    found = stac_source(config.input)
    return {} if found is None else {"gigaseg.stac_item_id": found[0], "gigaseg.stac_item": found[1]}


def _model_tags(model: str) -> dict[str, str]:
    if not model.startswith("models:/"):
        return {"gigaseg.model": model}
    from pipeline.tracking.model_versions import resolve

    found = resolve(model)
    return {
        "gigaseg.model": model,
        "gigaseg.model_name": found.name,
        "gigaseg.model_version": str(found.version),
        "gigaseg.model_run_id": found.run_id or "",
    }


def _scalar_metrics(prefix: str, row: dict[str, Any]) -> dict[str, float]:
    skip = {"region"}
    return {
        tracking.metric_key(f"{prefix}{k}"): float(v)
        for k, v in row.items()
        if k not in skip and isinstance(v, int | float) and v == v
    }


def check_reference_files(
    labels: str | os.PathLike[str] | None, regions: str | os.PathLike[str] | None
) -> None:
    """``--labels`` and ``--regions`` must be existing files (checked before any work starts)."""
    for path, what in ((labels, "--labels"), (regions, "--regions")):
        if path is not None:
            where = location(path)
            check_readable(where, f"file ({what})")
            if isinstance(where, Path) and not where.is_file():
                raise InputError(f"{path}: no such file ({what})")


def check_reference_grid(
    config: SegmentConfig, labels: str | os.PathLike[str] | None, regions: str | os.PathLike[str] | None
) -> None:
    """``--labels`` on the input's pixel grid and ``--regions`` polygons that parse, before any work.

    Only for 2D rasters, the inputs whose runs get a region table.
    """
    if labels is None and regions is None:
        return
    from pipeline.evaluation.region_metrics import polygon_regions
    from pipeline.inputs.band_stack import check_same_grid
    from pipeline.inputs.formats import describe_input
    from pipeline.inputs.raster import inspect_raster
    from pipeline.inputs.stac_item import is_stac_item, stac_scene
    from pipeline.job.model_source import load_model

    scene = config.input
    if is_stac_item(scene):  # its grid is that of the assets holding the card's bands
        _, card = load_model(config.model, in_channels=config.in_channels, num_classes=config.num_classes)
        scene = stac_scene(scene, card.band_names, config.model).stack
    raster = describe_input(scene, config.spacing).raster
    if raster is None:
        return
    if labels is not None:
        try:
            check_same_grid(raster, inspect_raster(labels))
        except InputError as exc:  # a STAC item's stack is read through a VRT: name the item
            raise InputError(str(exc).replace(str(raster.path), str(config.input))) from None
    if regions is not None:
        polygon_regions(regions, raster.crs_wkt, raster.transform, (raster.height, raster.width))


class _RegionTableHook:
    """The job's ``on_finished`` hook: the model card and, for 2D GeoTIFF outputs, the region table.

    It runs while the stores still exist (the work folder goes right after). A plain
    object, not a dataclass: Prefect walks into dataclass task parameters, and the
    metrics task must fill in this very object.
    """

    def __init__(
        self,
        labels: str | os.PathLike[str] | None,
        regions: str | os.PathLike[str] | None,
        outputs: OutputSet,
    ):
        self.labels = labels
        self.regions = regions
        self.outputs = outputs
        self.card: ModelCard | None = None
        self.table: RegionTable | None = None

    def __call__(self, job: Job) -> None:
        from pipeline.exporters.formats import output_format
        from pipeline.inputs.volume_geometry import is_volume

        self.card = job.card
        dims = len(job.scene.spatial_shape)
        if is_volume(job.scene.attrs) or output_format(job.config.output, dims) != "cog":
            return  # per-region tables are for 2D GeoTIFF outputs; a volume's run records per-label mL
        t0 = time.perf_counter()
        output_info = _output_info(self.outputs.staged(job.config.output))
        self.table = compute_region_table(
            job.store,
            job.plan,
            dict(job.scene.attrs),
            job.card.class_names,
            labels=self.labels,
            regions=self.regions,
            output_info=output_info,
        )
        job.timings["region_metrics"] = time.perf_counter() - t0


def _output_info(output: Where) -> Any:
    """The finished output's raster description."""
    from pipeline.inputs.raster import inspect_raster

    return inspect_raster(output)


def _tracked_config(
    config: SegmentConfig, labels: str | os.PathLike[str] | None, regions: str | os.PathLike[str] | None
) -> SegmentConfig:
    """A validated copy of ``config`` that keeps per-pixel uncertainty; fails before any work starts."""
    check_reference_files(labels, regions)
    for out in region_paths(config.output):
        if out.exists() and not config.overwrite:
            raise InputError(f"{out}: already exists (use --overwrite to replace it)")
    tracked = replace(config, uncertainty=True)
    tracked.validate()
    check_reference_grid(tracked, labels, regions)
    return tracked


def _params(
    config: SegmentConfig, labels: str | os.PathLike[str] | None, regions: str | os.PathLike[str] | None
) -> dict[str, str]:
    """The run's parameters: the config (less its free-form extras) and the reference files."""
    params = config.to_dict()
    params.pop("extra", None)
    return tracking.flat_params({**params, "labels": labels, "regions": regions})


def _summary_metrics(summary: SegmentSummary) -> dict[str, float]:
    """Throughput, counts, stage timings and per-label volumes / mean probabilities of a finished run."""
    metrics = {
        "seconds": summary.seconds,
        "mpx_per_s": summary.mpx_per_s,
        "pixels": summary.pixels,
        "valid_pixels": summary.valid_pixels,
        "blocks_run": summary.blocks_run,
        "blocks_skipped": summary.blocks_skipped,
        "tiles_run": summary.tiles_run,
        **{f"time_{k}": float(v) for k, v in summary.timings.items() if k != "tiles"},
    }
    for label, ml in summary.label_volumes_ml.items():
        metrics[tracking.metric_key(f"volume_ml_{label}")] = ml
    for label, p in summary.label_mean_probability.items():
        metrics[tracking.metric_key(f"mean_probability_{label}")] = p
    return metrics


def _region_table_files(table: RegionTable, csv_file: Path, geojson_file: Path) -> list[tuple[str, str]]:
    """The table written at its staged names beside the output (CSV, GeoJSON), as run artifacts."""
    table.write_csv(csv_file)
    table.write_geojson(geojson_file)
    return [(str(csv_file), "regions"), (str(geojson_file), "regions")]


def _preview_file(config: SegmentConfig, labels: Path, card: ModelCard, folder: Path) -> tuple[str, None]:
    """A PNG of the image, its classes (``labels``: the staged output) and the legend, as a run artifact."""
    from pipeline.evaluation.preview import write_preview
    from pipeline.inputs.band_stack import resolve_image
    from pipeline.inputs.stac_item import scene_for_model

    image = resolve_image(scene_for_model(config.input, card.band_names, config.model))
    png = write_preview(image, labels, folder / "preview.png", card.class_names, card.class_colors)
    return (str(png), None)


def _recorder(nested: bool) -> Recorder:
    """The helper process the command started for this run, else MLflow in this process."""
    helper = None if nested else take_helper()
    return helper if helper is not None else LocalRecorder()


def track_segment_run(
    config: SegmentConfig,
    labels: str | os.PathLike[str] | None = None,
    regions: str | os.PathLike[str] | None = None,
    experiment: str = tracking.SEGMENT_EXPERIMENT,
    run_name: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run: Callable[..., SegmentSummary] = segment,
) -> TrackedSegment:
    """Segment ``config`` inside an MLflow run and record everything about it.

    ``config`` itself is left as it is (the run uses a copy that keeps per-pixel
    uncertainty). ``run`` is the segmentation entry point (in-process
    :func:`segment` by default; any callable with its signature, e.g. a Ray executor's).
    """
    config = _tracked_config(config, labels, regions)
    csv_path, geojson_path = region_paths(config.output)
    run_tags = {"gigaseg.kind": "segment", **_model_tags(config.model), **_source_tags(config)}
    run_tags.update(tags or {})
    outputs = output_set(config)
    hook = _RegionTableHook(labels, regions, outputs)
    recorder = _recorder(nested)
    try:
        recorder.start(experiment, run_name or f"segment {config.input.name}", run_tags, nested)
        recorder.log(params=_params(config, labels, regions))
        summary = run(config, on_finished=hook, outputs=outputs)
        metrics = _summary_metrics(summary)
        params = {"blend_resolved": summary.blend, "resampled": summary.resampled or "no"}
        with tempfile.TemporaryDirectory() as tmp:
            if hook.table is None:
                recorder.log(params=params, metrics=metrics)
            else:
                recorder.log(
                    params=params,
                    metrics=metrics | _scalar_metrics("scene_", hook.table.scene_row()),
                    table=("regions/regions.json", hook.table.columns()),
                    artifacts=[
                        *_region_table_files(hook.table, *map(outputs.staged, (csv_path, geojson_path))),
                        _preview_file(config, outputs.staged(config.output), hook.card, Path(tmp)),
                    ],
                )
            run_id = recorder.sync()
        finish(config, outputs)
    except BaseException as exc:
        outputs.discard()
        recorder.end(tracking.end_status(exc))
        raise
    recorder.end(tracking.end_status(None))
    if hook.table is None:
        return TrackedSegment(summary, run_id, None, None, None)
    return TrackedSegment(summary, run_id, hook.table, csv_path, geojson_path)
