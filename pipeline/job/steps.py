"""The segmentation job as steps: check → ingest → resample → plan → blocks → map back → export → summary.

Resampling and mapping back happen only for a scene at another resolution than the
model's (:mod:`pipeline.inputs.resampling`, :mod:`pipeline.job.map_back`).

Each step is a plain function so the Prefect flow can make each one a task and
the Ray executor can replace :func:`~pipeline.execution.in_process.run_blocks_in_process`.
``segment`` chains them for in-process use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac

from pipeline.execution.in_process import run_blocks_in_process
from pipeline.execution.process_memory import release_freed_memory
from pipeline.execution.progress import Progress
from pipeline.exporters.cog import Georeference, export_labels_cog, export_probabilities_cog
from pipeline.exporters.formats import ExportedOutputs, companions, export_volume_outputs, output_format
from pipeline.exporters.stac import OutputFile, Product, item_json, item_name, relative_href, stac_item
from pipeline.inputs.band_stack import Scene, scene_files
from pipeline.inputs.formats import ingest_input
from pipeline.inputs.resampling import RESAMPLED_STORE, resample_scene, resampling_for
from pipeline.inputs.stac_item import stac_source
from pipeline.inputs.volume_geometry import is_volume
from pipeline.job.checks import CheckedInput, check_inputs
from pipeline.job.config import SegmentConfig
from pipeline.job.map_back import map_back
from pipeline.job.plan import Job, plan_job
from pipeline.job.summary import BlockCounts, SegmentSummary, summarize
from pipeline.stores.location import Where, remove_tree
from pipeline.stores.scene import SceneStore
from pipeline.stores.transfer import OutputSet

BlockRunner = Callable[[Job, Progress | None], tuple[int, int]]
"""Computes and writes a job's pending blocks (in process, or on Ray actors); returns (run, skipped)."""


def ingest_scene(config: SegmentConfig, checked: CheckedInput) -> SceneStore:
    """The input's scene store in the work folder: a tiled GeoTIFF read in place, else a chunked copy.

    Reused when the input is unchanged.
    """
    work = config.resolved_work_dir
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    _, chunk = config.block_and_chunk(checked.info.spatial_dims)
    try:
        # Other nodes of a joined Ray cluster may not see this machine's files.
        joins_cluster = bool(config.ray_address or os.environ.get("RAY_ADDRESS"))
        return ingest_input(
            checked.info,
            work / "scene.zarr",
            chunk=chunk,
            copy=config.copy_input,
            local_readers=not joins_cluster,
        )
    except BaseException:
        if fresh:  # nothing of this run is worth resuming: leave no trace
            remove_tree(work)
        raise


def resample(config: SegmentConfig, checked: CheckedInput, scene: SceneStore) -> SceneStore:
    """The scene the model runs on: ``scene`` itself, or a copy at the model's resolution.

    A copy unless ``--native-resolution`` or the card and scene agree (or cannot be
    compared); it is reused while the input and the resampling are the same.
    """
    resampling = resampling_for(checked.card, scene.attrs, config.native_resolution)
    if resampling is None:
        return scene
    _, chunk = config.block_and_chunk(len(scene.spatial_shape))
    raster = checked.info.raster if checked.info is not None else None
    store = config.resolved_work_dir / RESAMPLED_STORE
    return resample_scene(scene, resampling, store, chunk, raster=raster, source=str(config.input))


def prepare(config: SegmentConfig) -> Job:
    """Validate, load the model, ingest (and resample) the input and plan the blocks (no inference yet)."""
    checked = check_inputs(config)
    t0 = time.perf_counter()
    scene = ingest_scene(config, checked)
    release_freed_memory()
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_scene = resample(config, checked, scene)
    t_resample = time.perf_counter() - t0
    job = plan_job(config, checked, model_scene, input_scene=scene)
    job.timings["ingest"] = t_ingest
    if job.resampling is not None:
        job.timings["resample"] = t_resample
    return job


def infer(job: Job, run_blocks: BlockRunner | None = None) -> BlockCounts:
    """Run every pending block with a progress report (blocks, tiles, throughput, ETA).

    ``run_blocks`` says where (default: here).
    """
    done = job.store.done_mask()
    done_px = sum(b.num_pixels for b in job.plan if done[b.index])
    progress = Progress(
        int(np.prod(job.grid.shape)),
        job.plan.num_blocks,
        "segment",
        job.config.quiet,
        done_pixels=done_px,
        done_blocks=int(done.sum()),
    )
    try:
        run, skipped = (run_blocks or run_blocks_in_process)(job, progress)
    finally:
        progress.close()
    return BlockCounts(run, skipped, progress.retries)


def output_set(config: SegmentConfig) -> OutputSet:
    """The run's outputs, staged until :func:`finish`: labels and probabilities with what belongs to them.

    ``owned``: every name an earlier run on the same output may have left (sidecars,
    region tables); publishing removes the ones this run does not write again.
    """
    owned: list[Where] = [config.output, *companions(config.output), stac_item_location(config.output)]
    owned.append(style_location(config.output))
    if config.probabilities is not None:
        owned += [config.probabilities, *companions(config.probabilities)[:1]]
        owned.append(style_location(config.probabilities))
    return OutputSet(owned)


def style_location(output: Where) -> Where:
    """The QGIS style QGIS loads with ``output``: ``STEM.qml`` beside it."""
    return output.with_name(Path(output.name).with_suffix(".qml").name)


def stac_item_location(output: Where) -> Where:
    """Where the STAC item of a raster run's outputs goes: beside the labels."""
    return output.with_name(item_name(output.name))


def export(job: Job, outputs: OutputSet | None = None) -> ExportedOutputs:
    """Write the outputs of a finished store: COG(s), NIfTI or OME-Zarr, by output name.

    They are written at ``outputs``' staged names and appear under their final names
    only when the run publishes them (:func:`finish`); without ``outputs`` they are
    published at once. Returns the final names.
    """
    if not job.store.is_complete():
        raise RuntimeError("export called before every block is done")
    if job.input_scene is not None:
        raise RuntimeError("export called on the model's grid: map the outputs back first")
    if outputs is None:
        outputs = OutputSet()
        try:
            exported = export(job, outputs)
        except BaseException:
            outputs.discard()
            raise
        outputs.publish()
        return exported
    t0 = time.perf_counter()
    attrs = job.scene.attrs
    config = job.config
    labels = outputs.staged(config.output)
    probabilities = None if config.probabilities is None else outputs.staged(config.probabilities)
    vector = None if config.vector is None else outputs.staged(config.vector)
    raster = not is_volume(attrs) and output_format(config.output, len(job.scene.spatial_shape)) == "cog"
    if raster:
        _export_cogs(job, labels, probabilities)
    else:
        export_volume_outputs(
            job.store.path,
            job.scene,
            labels,
            probabilities,
            job.card.class_names,
            job.card.class_colors,
        )
    if vector is not None:
        _export_polygons(job, vector)
    if raster:
        item = stac_item_for(job, labels, probabilities, vector)
        outputs.staged(stac_item_location(config.output)).write_text(item_json(item))
    job.timings["export"] = time.perf_counter() - t0
    return ExportedOutputs(config.output, config.probabilities)


def finish(config: SegmentConfig, outputs: OutputSet) -> None:
    """The run succeeded: its outputs appear together, then the work folder goes unless kept."""
    outputs.publish()
    if not config.keep_work:
        remove_tree(config.resolved_work_dir)


def _export_cogs(job: Job, labels: Path, probabilities: Path | None) -> None:
    """The labels COG, tagged with the model, and the probabilities COG when asked for."""
    attrs = job.scene.attrs
    geo = Georeference(attrs.get("crs"), attrs["transform"])
    tags = {"GIGASEG_MODEL": job.config.model, "GIGASEG_ARCH": job.card.arch}
    export_labels_cog(job.store.path, labels, geo, job.card.class_names, job.card.class_colors, tags)
    if probabilities is not None:
        export_probabilities_cog(
            job.store.path, probabilities, geo, job.card.class_names, job.card.class_colors
        )


def stac_item_for(job: Job, labels: Path, probabilities: Path | None, vector: Path | None) -> pystac.Item:
    """The run's STAC item over the staged outputs (checksums of the files as they will be published)."""
    config, attrs = job.config, job.scene.attrs
    folder = config.output.parent
    outputs = [OutputFile("labels", labels, relative_href(config.output, folder))]
    staged = {"probabilities": (probabilities, config.probabilities), "polygons": (vector, config.vector)}
    for key, (local, where) in staged.items():
        if local is not None and where is not None:
            outputs.append(OutputFile(key, local, relative_href(where, folder)))
    vector_style = vector if vector is not None and vector.suffix.lower() != ".gpkg" else None
    for key, local in (("labels_style", labels), ("polygons_style", vector_style)):
        style = local.with_suffix(".qml") if local is not None else None
        if style is not None and style.exists():
            where = (config.output if key == "labels_style" else config.vector).with_name(style.name)
            outputs.append(OutputFile(key, style, relative_href(where, folder), ("style",)))
    source, source_item = _source_links(config.input)
    product = Product(
        item_id=Path(config.output.name).stem,
        source=source,
        model=config.model,
        crs_wkt=attrs.get("crs"),
        transform=attrs["transform"],
        shape=tuple(job.scene.spatial_shape),
        class_names=job.card.class_names,
        colors=job.card.class_colors,
        nodata=job.store.nodata,
        label_dtype=str(job.store.labels.dtype),
        properties={"gigaseg:arch": job.card.arch, **_resampled_property(job)},
        source_item=source_item,
    )
    return stac_item(product, outputs)


def _resampled_property(job: Job) -> dict[str, dict]:
    """``gigaseg:resampled``: the resolutions the model ran between, when the scene was resampled."""
    return {} if job.resampling is None else {"gigaseg:resampled": job.resampling.attrs()}


def _source_links(scene: Scene) -> tuple[list[str], str | None]:
    """What the output's item is derived from: the scene's files, or its STAC item (and the item's id)."""
    found = stac_source(scene)
    if found is not None:
        return [found[1]], found[0]
    return [str(f) for f in scene_files(scene)], None


def _export_polygons(job: Job, vector: Path) -> None:
    """The blocks' polygon pieces merged across block edges, cleaned and written by format.

    Without cleaning options the regions stream from the pieces to the file (memory bounded
    by the regions still open); cleaning looks at neighbours anywhere, so it holds them all.
    """
    from pipeline.exporters.polygon_stream import stream_features, write_region_stream
    from pipeline.exporters.polygons import (
        PolygonOptions,
        VectorTarget,
        clean,
        merge_pieces,
        pixel_area,
        read_pieces,
        write_regions,
    )

    t0 = time.perf_counter()
    config, attrs = job.config, job.scene.attrs
    target = VectorTarget(vector, attrs.get("crs"), job.card.class_names, job.card.class_colors)
    options = PolygonOptions(
        config.vector_min_area, config.vector_small, config.vector_fill_holes, config.vector_simplify
    )
    if not options.cleans:
        features = stream_features(lambda: job.store.polygon_pieces(job.plan), attrs["transform"])
        write_region_stream(features, target)
    else:
        merged = merge_pieces(read_pieces(job.store.polygon_pieces(job.plan)))
        area = pixel_area(attrs["transform"])
        write_regions(clean(merged, options, area, area**0.5), attrs["transform"], target)
    job.timings["polygons"] = time.perf_counter() - t0


def segment(
    config: SegmentConfig,
    on_finished: Callable[[Job], None] | None = None,
    run_blocks: BlockRunner | None = None,
    outputs: OutputSet | None = None,
) -> SegmentSummary:
    """Prepare → infer (here, unless ``run_blocks`` says where) → map back → export → summarize → publish.

    Given ``outputs``, the caller publishes them (:func:`finish`) once its own work
    on the run is done; a failure discards them either way.
    """
    t0 = time.perf_counter()
    staged = outputs or output_set(config)
    try:
        job = prepare(config)
        counts = infer(job, run_blocks)
        job = map_back(job)
        exported = export(job, staged)
        summary = summarize(job, exported, counts, time.perf_counter() - t0, on_finished)
    except BaseException:
        staged.discard()
        raise
    if outputs is None:
        finish(config, staged)
    return summary
