"""The planned job: tile grid, blending window, CRF settings, blocks and the output store.

:func:`plan_job` makes the plan after ingest; :func:`attach` reopens it where a
worker runs (no ingest, no new store).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models import SegmentationModel
from models.checkpoint import ModelCard
from pipeline.engine.crf import CRFParams, band_stats, refine
from pipeline.engine.slicewise import slice_align, slice_tile
from pipeline.errors import InputError
from pipeline.inputs.normalization import Normalizer, model_bands, normalizer_for, resolve_normalization
from pipeline.inputs.resampling import RESAMPLED_STORE, Resampling, resampling_for
from pipeline.inputs.volume_geometry import VolumeGeometry, is_volume
from pipeline.job.checks import CheckedInput, slice_axis_for
from pipeline.job.config import SegmentConfig
from pipeline.job.model_source import load_model, model_identity
from pipeline.stores.output import OutputStore, fingerprint
from pipeline.stores.scene import SceneStore
from pipeline.tiling.blending import BlendWindow, resolve_blend
from pipeline.tiling.blocks import BlockPlan
from pipeline.tiling.grid import Region, TileGrid


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
    resampling: Resampling | None = None
    """From the input's resolution to the model's, when ``scene`` is the input resampled to it."""
    input_scene: SceneStore | None = None
    """The ingested input, while ``scene`` is its resampled copy and the outputs are not mapped back yet."""

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

    def normalizer(self) -> Normalizer:
        """The card's normalisation as a function of a raw block."""
        return normalizer_for(self.normalization or self.card.normalization)


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
    sample, valid = _scene_sample(scene, bands)
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


def _scene_sample(scene: SceneStore, bands: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The model bands and valid mask on a regular subsample of about a million pixels.

    Read a chunk-thick slab at a time (the same lattice whatever the slab), so a scene
    read in place costs one pass over its tiles and memory stays one slab.
    """
    shape = scene.spatial_shape
    step = max(1, int((np.prod(shape) / 1_000_000) ** (1 / len(shape))))
    if step == 1:
        return scene.read(tuple((0, s) for s in shape), bands)
    slab = max(step, scene.chunk_shape[0] // step * step)
    images, masks = [], []
    every = (slice(None, None, step),) * (len(shape) - 1)
    for a in range(0, shape[0], slab):
        image, valid = scene.read(((a, min(shape[0], a + slab)), *((0, s) for s in shape[1:])), bands)
        images.append(image[(slice(None), slice(None, None, step), *every)])
        masks.append(valid[(slice(None, None, step), *every)])
    sample = np.concatenate(images, axis=1)
    return sample, (np.concatenate(masks, axis=0) if scene.has_mask else None)


def _tile_grid(config: SegmentConfig, checked: CheckedInput, scene: SceneStore) -> TileGrid:
    """The global tile grid; a 2D model over a volume tiles single slices."""
    model, slice_axis = checked.model, checked.slice_axis
    tile = config.tile or checked.card.tile_size or model.spec.default_tile
    if slice_axis is None:
        return TileGrid.create(scene.spatial_shape, tile, config.overlap, align=model.downsampling)
    return TileGrid.create(
        scene.spatial_shape,
        slice_tile(tile, slice_axis),
        config.overlap,
        align=slice_align(model.downsampling, slice_axis),
    )


def _job_fingerprint(
    config: SegmentConfig,
    checked: CheckedInput,
    scene: SceneStore,
    grid: TileGrid,
    window: BlendWindow,
    plan: BlockPlan,
    crf: CRFParams | None,
) -> str:
    """What the output depends on: a store with another fingerprint is not this job's."""
    slice_axis = checked.slice_axis
    settings: dict[str, Any] = {
        "input": scene.attrs.get("source_id"),
        "model": model_identity(config.model, config.seed, checked.model),
        "bands": checked.bands,
        "grid": [grid.tile, grid.stride],
        "blend": [window.mode, config.sigma],
        "block": plan.block_shape,
        "chunk": plan.chunk_shape,
        "probabilities": config.probabilities is not None,
        "crf": repr(crf),
        "uncertainty": config.uncertainty,
        **({"slice_axis": slice_axis} if slice_axis is not None else {}),
        **({"tta": True} if config.tta else {}),
        **({"polygons": True} if config.vector is not None else {}),
        **({"resampled": scene.attrs["resampled"]} if scene.attrs.get("resampled") else {}),
    }
    return fingerprint(settings)


def plan_job(
    config: SegmentConfig,
    checked: CheckedInput,
    scene: SceneStore,
    create: bool = True,
    input_scene: SceneStore | None = None,
) -> Job:
    """Tile grid, blending window, CRF settings, blocks, scene-wide normalisation, and the output store.

    ``scene``: the store the model runs on (the input's, or the input resampled to the
    model's resolution, with ``input_scene`` the ingested input). ``create``: open or
    create the store (new or resumed run); otherwise the store must already exist with
    this configuration's fingerprint (a worker attaching).
    """
    card, bands = checked.card, checked.bands
    block_size, chunk = config.block_and_chunk(len(scene.spatial_shape))
    grid = _tile_grid(config, checked, scene)
    blend = resolve_blend(config.blend, getattr(checked.model, "fully_convolutional", False))
    window = BlendWindow(grid, blend, config.sigma)
    crf = crf_params_for(config, scene, bands)
    reach = crf.reach(len(scene.spatial_shape), crf_spacing(scene)) if crf is not None else 0
    plan = BlockPlan.create(grid, block_size, chunk, reach=reach)
    norm = resolve_normalization(
        card.normalization,
        functools.partial(scene.read, bands=bands),
        scene.spatial_shape,
        scene.chunk_shape[0],
    )
    fp = _job_fingerprint(config, checked, scene, grid, window, plan, crf)
    path = config.resolved_work_dir / "output.zarr"
    resampling = Resampling.from_attrs(scene.attrs.get("resampled"))
    # Polygons of a resampled run are made on the input grid from the mapped labels and confidence.
    uncertainty = config.uncertainty or (resampling is not None and config.vector is not None)
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
            with_uncertainty=uncertainty,
        )
    return Job(
        config=config,
        model=checked.model,
        card=card,
        scene=scene,
        bands=bands,
        grid=grid,
        window=window,
        plan=plan,
        store=store,
        crf=crf,
        timings={},
        normalization=norm,
        slice_axis=checked.slice_axis,
        resampling=resampling,
        input_scene=input_scene if resampling is not None else None,
    )


def attach(config: SegmentConfig, load: Callable[..., tuple] = load_model) -> Job:
    """The job :func:`~pipeline.job.steps.prepare` made, reopened without ingesting or planning anew.

    What a worker (a Ray actor, possibly on another node sharing the work folder)
    calls: it opens the scene and output stores and loads the model. The output
    store must carry this configuration's fingerprint; it is never created here.
    ``load``: how the model is loaded (an actor serving many scenes passes its cache's).
    """
    work = config.resolved_work_dir
    try:
        scene = SceneStore.open(work / "scene.zarr")
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{work}: no complete scene store to attach to ({exc})") from None
    model, card = load(
        config.model,
        in_channels=config.in_channels or scene.num_bands,
        num_classes=config.num_classes,
        seed=config.seed,
    )
    bands = model_bands(card, scene.attrs.get("band_names"), scene.num_bands, str(config.input))
    input_scene = scene
    if resampling_for(card, scene.attrs, config.native_resolution) is not None:
        scene = SceneStore.open(work / RESAMPLED_STORE)
    dims = len(scene.spatial_shape)
    default_axis = VolumeGeometry.from_attrs(scene.attrs).slice_axis if is_volume(scene.attrs) else 0
    slice_axis = slice_axis_for(config, dims, model, default_axis)
    checked = CheckedInput(model=model, card=card, bands=bands, info=None, slice_axis=slice_axis)
    return plan_job(config, checked, scene, create=False, input_scene=input_scene)
