"""The segmentation job as steps: prepare → run blocks → export.

Each step is a plain function so the Prefect flow can make each one a task and
the Ray executor can replace :func:`run_blocks_in_process`. ``segment`` chains
them for in-process use.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import SegmentationModel
from models.checkpoint import ModelCard
from pipeline.engine.block import infer_block
from pipeline.engine.crf import CRFParams, band_stats, refine
from pipeline.engine.device import select_device
from pipeline.engine.predictor import TilePredictor
from pipeline.engine.slicewise import SliceWiseModel, slice_align, slice_tile
from pipeline.errors import InputError
from pipeline.execution.process_memory import release_freed_memory
from pipeline.execution.progress import Progress
from pipeline.exporters.cog import Georeference, export_labels_cog, export_probabilities_cog
from pipeline.inputs.formats import (
    InputDescription,
    describe_input,
    export_volume_outputs,
    ingest_input,
    output_format,
)
from pipeline.inputs.normalization import normalize, select_bands
from pipeline.inputs.scene_statistics import resolve_normalization
from pipeline.inputs.volume_geometry import VolumeGeometry, is_volume
from pipeline.job.config import SegmentConfig
from pipeline.job.model_source import load_model, model_identity
from pipeline.stores.block_output import BlockOutput
from pipeline.stores.output import OutputStore, fingerprint
from pipeline.stores.scene import SceneStore
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.blocks import Block, BlockPlan
from pipeline.tiling.grid import Region, TileGrid

log = logging.getLogger("gigaseg")


@dataclass
class Job:
    """A planned segmentation: model, scene, grid, blocks and the output store."""

    config: SegmentConfig
    model: SegmentationModel
    card: ModelCard
    scene: SceneStore
    bands: list[int]
    grid: TileGrid
    window: BlendWindow
    plan: BlockPlan
    store: OutputStore
    crf: CRFParams | None = None
    timings: dict[str, float] = field(default_factory=dict)
    normalization: dict | None = None
    """The card's normalisation with per-scene statistics resolved (None: the card's as is)."""
    slice_axis: int | None = None
    """Set when a 2D model runs slice by slice over a volume."""

    @property
    def num_classes(self) -> int:
        """Classes the model predicts."""
        return self.card.num_classes

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """Raw model bands and valid mask of a scene region."""
        return self.scene.read(region, self.bands)

    def refiner(self) -> Callable | None:
        """The CRF as the engine's refinement hook (None without CRF)."""
        if self.crf is None:
            return None
        return functools.partial(
            _refine, params=self.crf, spacing=crf_spacing(self.scene), timings=self.timings
        )

    def normalizer(self) -> Callable[[np.ndarray], np.ndarray]:
        """The card's normalisation as a function of a raw block."""
        return functools.partial(normalize, spec=self.normalization or self.card.normalization)


@dataclass
class SegmentSummary:
    """What a finished job reports."""

    output: Path
    probabilities: Path | None
    pixels: int
    valid_pixels: int
    class_fractions: dict[str, float]
    seconds: float
    blocks_run: int
    blocks_skipped: int
    tiles_run: int
    timings: dict[str, float]
    retries: int = 0
    label_volumes_ml: dict[str, float] = field(default_factory=dict)
    """Per label: voxels × voxel volume, in millilitres (volumes only)."""
    label_mean_probability: dict[str, float] = field(default_factory=dict)
    """Per label: mean winning probability over the voxels given that label."""

    @property
    def mpx_per_s(self) -> float:
        """Throughput over the whole job."""
        return self.pixels / 1e6 / max(self.seconds, 1e-9)

    def line(self) -> str:
        """The one-line summary printed at the end."""
        top = sorted(self.class_fractions.items(), key=lambda kv: -kv[1])[:4]
        classes = ", ".join(f"{k} {v:.0%}" for k, v in top)
        skipped = f", {self.blocks_skipped} block(s) resumed" if self.blocks_skipped else ""
        if self.retries:
            skipped += f", {self.retries} block(s) retried"
        volumes = ""
        if self.label_volumes_ml:
            top_ml = sorted(self.label_volumes_ml.items(), key=lambda kv: -kv[1])[:4]
            volumes = "; " + ", ".join(
                f"{k} {v:.1f} mL (p̄ {self.label_mean_probability.get(k, float('nan')):.2f})"
                for k, v in top_ml
                if v > 0
            )
        unit = "Mvox" if self.label_volumes_ml else "Mpx"
        return (
            f"wrote {self.output}: {self.pixels / 1e6:.1f} {unit}, {len(self.class_fractions)} classes "
            f"({classes}), {self.seconds:.1f} s, {self.mpx_per_s:.2f} {unit}/s{skipped}{volumes}"
        )


def _refine(
    probs: torch.Tensor,
    image: torch.Tensor,
    valid: torch.Tensor,
    params: CRFParams,
    spacing: tuple[float, ...] | None = None,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """The CRF on one block's context; its wall time is added to ``timings["crf"]`` (this process)."""
    t0 = time.perf_counter()
    out = refine(probs, image, valid, params, spacing)
    out = out if isinstance(out, torch.Tensor) else torch.from_numpy(out).to(probs.device)
    if timings is not None:
        if out.device.type == "cuda":  # kernels are asynchronous: wait for them before reading the clock
            torch.cuda.synchronize(out.device)
        timings["crf"] = timings.get("crf", 0.0) + time.perf_counter() - t0
    return out


def crf_spacing(scene: SceneStore) -> tuple[float, ...] | None:
    """The voxel spacing (z, y, x) the CRF's kernels and halo use for a volume; None for rasters."""
    return VolumeGeometry.from_attrs(scene.attrs).spacing if is_volume(scene.attrs) else None


def crf_params_for(config: SegmentConfig, scene: SceneStore, bands: list[int]) -> CRFParams | None:
    """CRF settings with appearance-band scaling from scene-wide statistics (never per block)."""
    if config.crf == "none":
        return None
    shape = scene.spatial_shape
    step = max(1, int((np.prod(shape) / 1_000_000) ** (1 / len(shape))))
    sample, valid = (
        scene.read(tuple((0, s) for s in shape), bands)
        if step == 1
        else (
            np.stack([scene.image[(b, *(slice(None, None, step),) * len(shape))] for b in bands]),
            np.asarray(scene.group["valid"][(slice(None, None, step),) * len(shape)], dtype=bool)
            if scene.has_mask
            else None,
        )
    )
    appearance = config.crf_bands or tuple(range(min(3, len(bands))))
    if max(appearance) >= len(bands):
        raise InputError(f"--crf-bands {list(appearance)}: the model reads only {len(bands)} band(s)")
    low, high = band_stats(sample, valid, bands=appearance)
    return CRFParams(
        mode=config.crf,
        iterations=config.crf_iterations,
        radius=config.crf_radius,
        smooth_weight=config.crf_smooth_weight,
        smooth_sigma=config.crf_smooth_sigma,
        appearance_weight=config.crf_appearance_weight,
        appearance_sigma_pos=config.crf_appearance_sigma_pos,
        appearance_sigma_feat=config.crf_appearance_sigma_feat,
        bands=appearance,
        band_low=low,
        band_high=high,
    )


@dataclass
class CheckedInput:
    """What :func:`check_inputs` established: the input is readable and fits the model."""

    model: SegmentationModel
    card: ModelCard
    bands: list[int]
    info: InputDescription | None
    """The input's header (None when a worker reattaches to an ingested scene)."""
    slice_axis: int | None = None


def check_inputs(config: SegmentConfig) -> CheckedInput:
    """Validate the options, open the input's header and load the model (no data is read yet)."""
    config.validate()
    info = describe_input(config.input, config.spacing)
    for out in (config.output, config.probabilities):
        if out is not None:
            output_format(out, info.spatial_dims)
    model, card = load_model(
        config.model,
        in_channels=config.in_channels or info.num_bands,
        num_classes=config.num_classes,
        seed=config.seed,
    )
    if info.kind == "nifti" and card.bands is None and info.num_bands != card.in_channels:
        raise InputError(  # the channel rule, said out loud: a 4D NIfTI's 4th axis holds channels
            f"{config.input}: has {info.num_bands} channel(s) (a NIfTI's 4th axis is read as channels) "
            f"but the model expects {card.in_channels}"
        )
    bands = select_bands(card.bands, info.num_bands, card.in_channels, str(config.input))
    default_axis = info.volume.geometry.slice_axis if info.volume is not None else 0
    slice_axis = _slice_axis(config, info.spatial_dims, model, default_axis)
    if info.raster is not None and not info.raster.georeferenced:
        log.warning("%s: not georeferenced; the output has pixel coordinates only", config.input)
    if not model.spec.fully_convolutional:
        log.warning(
            "%s is not fully convolutional (global pooling): tiled output depends on the tile size",
            model.arch,
        )
    return CheckedInput(model, card, bands, info, slice_axis)


def _slice_axis(config: SegmentConfig, scene_dims: int, model: SegmentationModel, default: int) -> int | None:
    """The axis a 2D model runs along over a volume (None when model and scene dims agree)."""
    if model.spatial_dims == scene_dims:
        if config.slice_axis is not None and scene_dims == 3:
            raise InputError(f"--slice-axis is for 2D models over volumes; {model.arch} is 3D")
        return None
    if model.spatial_dims == 2 and scene_dims == 3:
        return config.slice_axis if config.slice_axis is not None else default
    raise InputError(
        f"{config.input}: is a {scene_dims}D {'volume' if scene_dims == 3 else 'raster'} "
        f"but {model.arch} is a {model.spatial_dims}D model"
    )


def ingest_scene(config: SegmentConfig, checked: CheckedInput) -> SceneStore:
    """Copy the input into the chunked scene store of the work folder (reused when unchanged)."""
    work = config.resolved_work_dir
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    _, chunk = config.block_and_chunk(checked.info.spatial_dims)
    try:
        return ingest_input(checked.info, work / "scene.zarr", chunk=chunk)
    except BaseException:
        if fresh:  # nothing of this run is worth resuming: leave no trace
            shutil.rmtree(work, ignore_errors=True)
        raise


def plan_job(config: SegmentConfig, checked: CheckedInput, scene: SceneStore, create: bool = True) -> Job:
    """Tile grid, blending window, CRF settings, blocks, scene-wide normalisation, and the output store.

    ``create``: open or create the store (new or resumed run); otherwise the
    store must already exist with this configuration's fingerprint (a worker attaching).
    """
    model, card, bands, slice_axis = checked.model, checked.card, checked.bands, checked.slice_axis
    block_size, chunk = config.block_and_chunk(len(scene.spatial_shape))
    tile = config.tile or card.tile_size or model.spec.default_tile
    if slice_axis is None:
        grid = TileGrid.create(scene.spatial_shape, tile, config.overlap, align=model.downsampling)
    else:
        grid = TileGrid.create(
            scene.spatial_shape,
            slice_tile(tile, slice_axis),
            config.overlap,
            align=slice_align(model.downsampling, slice_axis),
        )
    window = BlendWindow(grid, config.blend, config.sigma)
    crf = crf_params_for(config, scene, bands)
    reach = crf.reach(len(scene.spatial_shape), crf_spacing(scene)) if crf is not None else 0
    plan = BlockPlan.create(grid, block_size, chunk, reach=reach)
    norm = resolve_normalization(
        card.normalization,
        functools.partial(scene.read, bands=bands),
        scene.spatial_shape,
        scene.chunk_shape[0],
    )
    fp = fingerprint(
        {
            "input": scene.attrs.get("source_id"),
            "model": model_identity(config.model, config.seed, model),
            "bands": bands,
            "grid": [grid.tile, grid.stride],
            "blend": [config.blend, config.sigma],
            "block": plan.block_shape,
            "chunk": plan.chunk_shape,
            "probabilities": config.probabilities is not None,
            "crf": repr(crf),
            "uncertainty": config.uncertainty,
            **({"slice_axis": slice_axis} if slice_axis is not None else {}),
            **({"tta": True} if config.tta else {}),
        }
    )
    path = config.resolved_work_dir / "output.zarr"
    if not create:
        store = OutputStore.open_existing(path, fp)
    else:
        store = OutputStore.open_or_create(
            path,
            plan,
            card.num_classes,
            config.probabilities is not None,
            fp,
            attrs={"class_names": card.class_names},
            with_uncertainty=config.uncertainty,
        )
    return Job(config, model, card, scene, bands, grid, window, plan, store, crf, {}, norm, slice_axis)


def attach(config: SegmentConfig) -> Job:
    """The job :func:`prepare` made, reopened without ingesting or planning anew.

    What a worker (a Ray actor, possibly on another node sharing the work folder)
    calls: it opens the scene and output stores and loads the model. The output
    store must carry this configuration's fingerprint; it is never created here.
    """
    work = config.resolved_work_dir
    try:
        scene = SceneStore.open(work / "scene.zarr")
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{work}: no complete scene store to attach to ({exc})") from None
    model, card = load_model(
        config.model,
        in_channels=config.in_channels or scene.num_bands,
        num_classes=config.num_classes,
        seed=config.seed,
    )
    bands = select_bands(card.bands, scene.num_bands, card.in_channels, str(config.input))
    dims = len(scene.spatial_shape)
    default_axis = VolumeGeometry.from_attrs(scene.attrs).slice_axis if is_volume(scene.attrs) else 0
    slice_axis = _slice_axis(config, dims, model, default_axis)
    checked = CheckedInput(model, card, bands, None, slice_axis)
    return plan_job(config, checked, scene, create=False)


def prepare(config: SegmentConfig) -> Job:
    """Validate, load the model, ingest the input and plan the blocks (no inference yet)."""
    checked = check_inputs(config)
    t0 = time.perf_counter()
    scene = ingest_scene(config, checked)
    release_freed_memory()
    t_ingest = time.perf_counter() - t0
    job = plan_job(config, checked, scene)
    job.timings["ingest"] = t_ingest
    return job


def predictor_for(job: Job, device: torch.device | None = None) -> TilePredictor:
    """A tile predictor for this job's model on the configured device."""
    device = device or select_device(job.config.device)
    model = job.model if job.slice_axis is None else SliceWiseModel(job.model, job.slice_axis)
    predictor = TilePredictor(
        model,
        device,
        job.config.batch_size,
        job.config.amp,
        tta=job.config.tta,
        channels_last=job.config.channels_last,
    )
    predictor.fit_to_memory((len(job.bands), *job.grid.tile))
    return predictor


def compute_block(
    job: Job,
    block: Block,
    predictor: TilePredictor,
    on_tiles: Callable[[int], None] | None = None,
    read: Callable[[Region], tuple[np.ndarray, np.ndarray]] | None = None,
) -> BlockOutput:
    """One block's labels (and probabilities), not yet written.

    ``read`` replaces the scene read (a worker passes the footprint it prefetched).
    The block's freed temporaries go back to the system before it returns (see
    :func:`~pipeline.execution.process_memory.release_freed_memory`).
    """
    output = infer_block(
        read or job.read,
        block,
        job.grid,
        job.window,
        predictor,
        job.normalizer(),
        job.num_classes,
        with_probabilities=job.store.probabilities is not None,
        refiner=job.refiner(),
        on_tiles=on_tiles,
        with_uncertainty=job.store.confidence is not None,
    )
    release_freed_memory()
    return output


def run_blocks_in_process(job: Job, progress: Progress | None = None) -> tuple[int, int]:
    """Compute and write every pending block here; returns (run, skipped).

    One I/O thread reads the next block's footprint and writes the previous block's
    outputs while this block computes (zarr's codecs release the GIL), so reading
    and writing hide behind the model instead of adding to it. A block counts as
    done once its write has finished.
    """
    if job.config.threads:
        torch.set_num_threads(job.config.threads)
    pending = job.store.pending(job.plan)
    skipped = job.plan.num_blocks - len(pending)
    predictor = predictor_for(job)
    on_tiles = progress.tiles_done if progress else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gigaseg-io") as io:
        next_read = io.submit(job.read, pending[0].footprint) if pending else None
        writing: tuple[Block, Future[None]] | None = None
        for i, block in enumerate(pending):
            assert next_read is not None
            footprint = next_read.result()
            if i + 1 < len(pending):
                next_read = io.submit(job.read, pending[i + 1].footprint)
            output = compute_block(job, block, predictor, on_tiles, read=lambda _region, f=footprint: f)
            if writing is not None:
                _finish_write(*writing, progress)
            writing = (block, io.submit(job.store.write_block, block, output))
            del output  # the queued write holds it until written; not through the next block's compute
        if writing is not None:
            _finish_write(*writing, progress)
    job.timings["infer"] = time.perf_counter() - t0
    job.timings["tiles"] = predictor.tiles_run
    return len(pending), skipped


def _finish_write(block: Block, write: Future[None], progress: Progress | None) -> None:
    write.result()
    if progress:
        progress.block_done(block.num_pixels)


def export(job: Job) -> tuple[Path, Path | None]:
    """Write the outputs of a finished store: COG(s), NIfTI or OME-Zarr, by output name."""
    if not job.store.is_complete():
        raise RuntimeError("export called before every block is done")
    t0 = time.perf_counter()
    attrs = job.scene.attrs
    if is_volume(attrs) or output_format(job.config.output, len(job.scene.spatial_shape)) != "cog":
        out, probs = export_volume_outputs(
            job.store.path,
            job.scene,
            job.config.output,
            job.config.probabilities,
            job.card.class_names,
            job.card.class_colors,
        )
        job.timings["export"] = time.perf_counter() - t0
        return out, probs
    geo = Georeference(attrs.get("crs"), attrs["transform"])
    tags = {"GIGASEG_MODEL": job.config.model, "GIGASEG_ARCH": job.card.arch}
    out = export_labels_cog(
        job.store.path, job.config.output, geo, job.card.class_names, job.card.class_colors, tags
    )
    probs = None
    if job.config.probabilities is not None:
        probs = export_probabilities_cog(job.store.path, job.config.probabilities, geo, job.card.class_names)
    job.timings["export"] = time.perf_counter() - t0
    return out, probs


def class_fractions(job: Job) -> tuple[dict[str, float], int]:
    """Fraction of valid pixels per class, and the valid count.

    From the per-block label counts the engine stores with every block (reading the
    labels back cost 0.8 s per 67 Mpx).
    """
    counts = np.rint(job.store.label_stats()[:, 0]).astype(np.int64)
    total = int(counts.sum())
    return {n: float(c) / max(total, 1) for n, c in zip(job.card.class_names, counts)}, total


def label_metrics(job: Job) -> tuple[dict[str, float], dict[str, float]]:
    """Per label: volume in mL (volumes only; empty for rasters) and mean winning probability."""
    stats = job.store.label_stats()
    names = job.card.class_names
    mean_p = {n: float(s / c) for n, (c, s) in zip(names, stats) if c > 0}
    if not is_volume(job.scene.attrs):
        return {}, mean_p
    voxel_ml = VolumeGeometry.from_attrs(job.scene.attrs).voxel_volume_mm3 / 1000.0
    return {n: float(c) * voxel_ml for n, (c, _) in zip(names, stats)}, mean_p


BlockRunner = Callable[[Job, Progress | None], tuple[int, int]]
"""Computes and writes a job's pending blocks (in process, or on Ray actors); returns (run, skipped)."""


def infer(job: Job, run_blocks: BlockRunner | None = None) -> tuple[int, int, int]:
    """Run every pending block with a progress report (blocks, tiles, throughput, ETA).

    ``run_blocks`` says where (default: here). Returns (run, skipped, retried).
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
    return run, skipped, progress.retries


def summarize(
    job: Job,
    outputs: tuple[Path, Path | None],
    counts: tuple[int, int, int],
    seconds: float,
    on_finished: Callable[[Job], None] | None = None,
) -> SegmentSummary:
    """Class fractions of the finished output; removes the work folder unless asked to keep it.

    ``on_finished(job)`` runs first, while the stores still exist (e.g. per-region
    metrics read them).
    """
    fractions, valid = class_fractions(job)
    volumes_ml, mean_probability = label_metrics(job)
    if on_finished is not None:
        on_finished(job)
    if not job.config.keep_work:
        shutil.rmtree(job.config.resolved_work_dir, ignore_errors=True)
    return SegmentSummary(
        outputs[0],
        outputs[1],
        int(np.prod(job.grid.shape)),
        valid,
        fractions,
        seconds,
        counts[0],
        counts[1],
        int(job.timings.get("tiles", 0)),
        job.timings,
        counts[2],
        volumes_ml,
        mean_probability,
    )


def segment(
    config: SegmentConfig,
    on_finished: Callable[[Job], None] | None = None,
    run_blocks: BlockRunner | None = None,
) -> SegmentSummary:
    """Prepare → infer (here, unless ``run_blocks`` says where) → export → summarize."""
    t0 = time.perf_counter()
    job = prepare(config)
    counts = infer(job, run_blocks)
    outputs = export(job)
    return summarize(job, outputs, counts, time.perf_counter() - t0, on_finished)
