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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.evaluation.region_metrics import RegionTable, compute_region_table
from pipeline.job.config import SegmentConfig
from pipeline.job.plan import Job
from pipeline.job.steps import segment
from pipeline.job.summary import SegmentSummary
from pipeline.tracking import runs as tracking


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


def region_paths(output: Path) -> tuple[Path, Path]:
    """Where the per-region table goes beside ``output`` (CSV, GeoJSON)."""
    stem = output.name.removesuffix(output.suffix)
    return output.with_name(f"{stem}.regions.csv"), output.with_name(f"{stem}.regions.geojson")


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
        if path is not None and not Path(path).is_file():
            raise InputError(f"{path}: no such file ({what})")


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

    ``run`` is the segmentation entry point (in-process :func:`segment` by
    default; any callable with its signature, e.g. a Ray executor's).
    """
    check_reference_files(labels, regions)
    csv_path, geojson_path = region_paths(config.output)
    for out in (csv_path, geojson_path):
        if out.exists() and not config.overwrite:
            raise InputError(f"{out}: already exists (use --overwrite to replace it)")
    config.uncertainty = True
    config.validate()
    model_tags = _model_tags(config.model)
    found: dict[str, Any] = {}

    def on_finished(job: Job) -> None:
        from pipeline.exporters.formats import output_format
        from pipeline.inputs.raster import inspect_raster
        from pipeline.inputs.volume_geometry import is_volume

        found["card"] = job.card
        dims = len(job.scene.spatial_shape)
        if is_volume(job.scene.attrs) or output_format(job.config.output, dims) != "cog":
            return  # per-region tables are for 2D GeoTIFF outputs; a volume's run records per-label mL
        t0 = time.perf_counter()
        found["table"] = compute_region_table(
            job.store,
            job.plan,
            dict(job.scene.attrs),
            job.card.class_names,
            labels=labels,
            regions=regions,
            output_info=inspect_raster(job.config.output),
        )
        found["card"] = job.card
        job.timings["region_metrics"] = time.perf_counter() - t0

    name = run_name or f"segment {config.input.name}"
    with tracking.run(
        experiment, name, {"gigaseg.kind": "segment", **model_tags, **(tags or {})}, nested
    ) as r:
        import mlflow

        params = config.to_dict()
        params.pop("extra", None)
        mlflow.log_params(tracking.flat_params({**params, "labels": labels, "regions": regions}))
        summary = run(config, on_finished=on_finished)
        table: RegionTable | None = found.get("table")
        card = found["card"]
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
        if table is None:
            mlflow.log_metrics(metrics)
            return TrackedSegment(summary, r.info.run_id, None, None, None)
        metrics |= _scalar_metrics("scene_", table.scene_row())
        mlflow.log_metrics(metrics)
        table.write_csv(csv_path)
        table.write_geojson(geojson_path)
        mlflow.log_table(table.columns(), "regions/regions.json")
        mlflow.log_artifact(str(csv_path), "regions")
        mlflow.log_artifact(str(geojson_path), "regions")
        with tempfile.TemporaryDirectory() as tmp:
            from pipeline.evaluation.preview import write_preview

            png = write_preview(
                config.input, summary.output, Path(tmp) / "preview.png", card.class_names, card.class_colors
            )
            mlflow.log_artifact(str(png))
    return TrackedSegment(summary, r.info.run_id, table, csv_path, geojson_path)
