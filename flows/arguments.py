"""The command line's options, read from the config dataclasses so defaults live in one place.

``SegmentConfig`` (with its CRF defaults from ``CRFParams``) and ``TrainSettings`` own every
default. Here each field gets its flag, type and help; the parser takes ``default=`` from the
field itself, and the same tables render the option tables of ``docs/configuration.md``
(:mod:`flows.configuration_table`). Shared by the ``gigaseg`` command line and the flow
scripts (``python flows/segment_scene.py ARGS``), which must not import the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine.crf import DEFAULT_ITERATIONS
from pipeline.errors import InputError
from pipeline.execution.placement import RAY_MIN_PIXELS
from pipeline.job.batch_inputs import LIST_PREFIX, batch_outputs, expand_inputs
from pipeline.job.config import SegmentConfig
from pipeline.stores.location import location
from pipeline.tracking.promotion import EvaluationScene
from pipeline.training.settings import TrainSettings
from pipeline.watch.settings import WatchSettings


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line and in ``docs/configuration.md``."""

    help: str | None = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    """The value's name in the docs (default: from the type: N, F or PATH)."""
    unset: str = "—"
    """What the docs say a None default means (``all cores``)."""
    meaning: str | None = None
    """The docs' account when longer than the help."""


def option_flag(name: str, default: object) -> str:
    """``--field-name``, or ``--no-field-name`` for a switch that is on by default."""
    return f"--{'no-' if default is True else ''}{name.replace('_', '-')}"


def field_default(owner: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``owner`` (a fresh one for factories)."""
    field = owner.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def add_field_option(p: argparse.ArgumentParser, owner: type, name: str, option: Option) -> None:
    """Add the option of field ``name``, its default read from the dataclass ``owner``."""
    default = field_default(owner, name)
    flag = option_flag(name, default)
    if isinstance(default, bool):
        action = "store_false" if default else "store_true"
        p.add_argument(flag, dest=name, action=action, help=option.help)
    else:
        p.add_argument(flag, dest=name, type=option.type, default=default, help=option.help)


def _band_list(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(","))


#: The options of the job itself (``gigaseg segment`` only), by ``SegmentConfig`` field.
JOB_OPTIONS: dict[str, Option] = {
    "probabilities": Option(
        "also write per-class probabilities here", location, meaning="also write a float32 probabilities COG"
    ),
    "overwrite": Option("replace existing outputs"),
    "quiet": Option("no progress bar or summary"),
    "work_dir": Option(
        "where stores live while running (resume point)",
        location,
        metavar="LOCATION",
        unset="`OUTPUT.gigaseg-work`",
        meaning="stores while running; the resume point",
    ),
    "keep_work": Option("keep the work folder after success"),
    "vector": Option(
        "also write the classes as polygons: .gpkg, .fgb or .parquet",
        location,
        meaning="also write one polygon per connected region of a class (GeoPackage, FlatGeobuf or "
        "GeoParquet by extension), merged across blocks, with a QGIS style",
    ),
    "vector_min_area": Option("merge (or drop) regions under this area (CRS units²)", float),
    "vector_small": Option("regions under --vector-min-area: merge or drop", metavar="MODE"),
    "vector_fill_holes": Option("fill holes under this area (CRS units²)", float),
    "vector_simplify": Option("simplify polygons, keeping shared edges (tolerance, CRS units)", float),
}

#: ``SegmentConfig`` fields that no option sets.
INTERNAL_FIELDS = frozenset({"input", "model", "output", "uncertainty"})

#: How to segment (tiling, blending, device, CRF): every other ``SegmentConfig`` field, in its order.
ENGINE_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(SegmentConfig) if f.name not in INTERNAL_FIELDS | JOB_OPTIONS.keys()
)

_ITERATIONS = " / ".join(f"{n} {mode}" for mode, n in DEFAULT_ITERATIONS.items())
_SIGMA_FEAT = "σβ, appearance colour width, on bands scaled 0–255 by scene-wide 2nd/98th percentiles"
_TILE_MEANING = "tile size in pixels; rounded up to the model's downsampling factor"
_BLEND_MEANING = (
    "`auto` (`crop` for a model whose registry entry declares it fully convolutional, `gaussian` for "
    "one with global pooling or attention; the mode used is in the run summary and the MLflow run), "
    "`gaussian` (weighted mean, smooth across tile edges), `crop` (each pixel from the one tile whose "
    "centre holds it: half the overlap dropped per side; closest to an untiled pass for fully "
    "convolutional models, 2–42× closer than `gaussian` on the demo's U-Net, see bench/RESULTS.md "
    '"Blending modes"; but hard steps at kept edges for models with global pooling: seam contrast 31 '
    "against 1.9 for `gaussian` on a trained LEDNet), `constant` (plain mean; the smoothest edges with "
    "global pooling)"
)
_WORKERS_MEANING = (
    "Ray actors; auto = in this process without Ray for a job on one machine with < 2 GPUs and "
    f"< {RAY_MIN_PIXELS / 1e6:.0f} Mpx pending (`pipeline/execution/placement.py`), else Ray with one "
    "actor per GPU in the cluster (`--workers-per-gpu` each), or one single-threaded CPU actor per core "
    "(each with cores ÷ actors torch threads); `0` always runs the blocks in this process, N > 0 "
    "always on N Ray actors"
)

#: The engine options by ``SegmentConfig`` field (shared by ``segment`` and ``watch``).
ENGINE_HELP: dict[str, Option] = {
    "tile": Option(
        "tile size in pixels (default: the model's)",
        int,
        unset="model card's, else the architecture's",
        meaning=_TILE_MEANING,
    ),
    "overlap": Option(
        "tile overlap fraction in [0, 1)",
        float,
        meaning="fraction of the tile shared with the neighbour, in [0, 1)",
    ),
    "blend": Option("auto, crop, gaussian or constant", meaning=_BLEND_MEANING),
    "sigma": Option(
        "gaussian sigma, fraction of the tile", float, meaning="Gaussian σ as a fraction of the tile"
    ),
    "block": Option(
        "output block size (whole chunks)",
        int,
        meaning="output block side (rounded up to whole chunks); memory scales with it, "
        "recomputed tiles shrink with it",
    ),
    "chunk": Option("store chunk size in pixels", int, meaning="store chunk side (multiple of 16)"),
    "batch_size": Option("tiles per forward pass", int),
    "device": Option(
        "auto, cpu, cuda or cuda:N", meaning="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`"
    ),
    "amp": Option(
        "mixed precision on GPU (bf16/fp16)",
        meaning="mixed precision on GPU (bf16 where supported, else fp16)",
    ),
    "channels_last": Option(
        "run the model in its own memory layout (default: channels-last, faster convolutions)",
        meaning="run the model in its own memory layout; by default weights and batches are channels-last "
        "(NHWC / NDHWC), 1.1–3.4× faster convolutions on CPU, probabilities equal to ~1e-7",
    ),
    "num_classes": Option("classes, for arch:NAME models", int),
    "in_channels": Option("input channels, for arch:NAME models", int),
    "seed": Option("weight seed, for arch:NAME models", int),
    "threads": Option(
        "torch threads (default: all cores)", int, unset="all cores", meaning="torch intra-op threads"
    ),
    "crf": Option(
        "refinement: none, local (exact blockwise) or dense",
        meaning="refinement: `local` (windowed mean-field, blockwise-exact, 2D and 3D) or `dense` "
        "(DenseCRF, 2D, per block)",
    ),
    "crf_iterations": Option(
        f"mean-field iterations (default: {_ITERATIONS.replace(' /', ',')})",
        int,
        unset=_ITERATIONS,
        meaning="mean-field iterations (halo = iterations × radius)",
    ),
    "crf_radius": Option(
        "local CRF window radius (pixels)",
        float,
        meaning="local window radius in pixels (volumes: in voxels of the finest axis, "
        "scaled by the voxel spacing)",
    ),
    "crf_smooth_weight": Option("w2, smoothness kernel weight", float),
    "crf_smooth_sigma": Option("σγ, smoothness width (pixels)", float),
    "crf_appearance_weight": Option("w1, appearance kernel weight", float),
    "crf_appearance_sigma_pos": Option("σα, appearance position width", float),
    "crf_appearance_sigma_feat": Option("σβ, appearance colour width (0–255)", float, meaning=_SIGMA_FEAT),
    "crf_bands": Option(
        "appearance bands, e.g. 3,2,1",
        _band_list,
        metavar="I,J,K",
        unset="the first three",
        meaning="appearance bands (0-based among the model's bands), e.g. NIR,red,green",
    ),
    "workers": Option(
        "Ray actors (default: none for a small job on one machine, else one per GPU or one "
        "1-thread CPU actor per core; env GIGASEG_WORKERS); 0 runs in this process without Ray",
        int,
        unset="`$GIGASEG_WORKERS`, else auto",
        meaning=_WORKERS_MEANING,
    ),
    "workers_per_gpu": Option(
        "Ray actors sharing each GPU, each preparing tiles for it (default 1: one actor per GPU)",
        int,
        meaning="Ray actors per GPU: each asks Ray for 1/N of a GPU and fits its batches to 1/N of the "
        "GPU's free memory, so N processes read, normalise and write for one device; for a GPU "
        "machine whose one actor's CPU work leaves the GPU waiting (`--workers` caps the total). "
        "With N ≥ 2 a job on a single GPU runs on Ray like one on several GPUs",
    ),
    "ray_address": Option(
        "Ray cluster to join (default: RAY_ADDRESS, else a private local Ray for this command)",
        metavar="ADDR",
        unset="`$RAY_ADDRESS`, else a private local Ray, stopped when the command ends",
        meaning="the Ray cluster to run on",
    ),
    "spacing": Option(
        "voxel size Z,Y,X in mm (or one number) for a TIFF stack",
        metavar="Z,Y,X",
        meaning="voxel size in mm for a TIFF stack (one number: isotropic); required to read a "
        "multi-page TIFF as a volume",
    ),
    "slice_axis": Option(
        "2D model over a volume: axis 0 (z), 1 (y) or 2 (x)",
        int,
        unset="the input's slice axis",
        meaning="run a 2D model slice by slice over a volume along store axis 0 (z), 1 (y) or 2 (x)",
    ),
    "native_resolution": Option(
        "run the scene at its own resolution: no resampling to the model's (card gsd/spacing), "
        "and no refusal when far from it",
        meaning="run the scene at its own resolution: without it, a scene at another resolution "
        "than the model's card (`gsd` m/px, `spacing` mm) is resampled to the card's and the "
        "outputs mapped back to the input's grid (`pipeline/inputs/resampling.py`, "
        "`pipeline/job/map_back.py`), and one more than 4× finer or coarser is refused",
    ),
    "copy_input": Option(
        "copy a tiled GeoTIFF / COG input into the work folder instead of reading it in place",
        meaning="copy the input into the work folder's scene store even when it is a tiled GeoTIFF "
        "/ COG, which is otherwise read in place from its own tiles (`pipeline/inputs/tiled_source.py`); "
        "for a source on slow or metered storage, since blocks read their overlapping edges twice. "
        "Striped files, VRTs and other formats are always copied, and so is a local file when the "
        "work folder is on object storage or the run joins a Ray cluster (workers on other nodes "
        "may not reach it)",
    ),
    "tta": Option(
        "flip test-time augmentation (2^D passes per tile)",
        meaning="flip test-time augmentation: mean softmax over all 2^D mirrors of each tile (8 "
        "passes in 3D, 4 in 2D)",
    ),
    "volume_block": Option(
        "output block side for volumes (voxels)",
        int,
        meaning="output block side for volumes (voxels, whole chunks); `--block` is for rasters",
    ),
    "volume_chunk": Option(
        "store chunk side for volumes (voxels)",
        int,
        meaning="store chunk side for volumes (multiple of 16); `--chunk` is for rasters",
    ),
}


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """How to segment (tiling, blending, device, CRF), shared by ``segment`` and ``watch``."""
    for name in ENGINE_OPTIONS:
        add_field_option(p, SegmentConfig, name, ENGINE_HELP[name])


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gigaseg segment`` (and of ``python flows/segment_scene.py``)."""
    p.add_argument(
        "input",
        nargs="+",
        help="raster (GeoTIFF or anything GDAL reads), band stack (a.tif,b.tif,…: one band a file, "
        "coarser bands resampled to the finest), STAC item (.json, assets picked by the model's band "
        "names) or volume (.nii/.nii.gz, DICOM folder, "
        "OME-Zarr, TIFF stack with --spacing), a path or a URL (s3://…, https://…); several "
        f"(paths, URLs, quoted globs such as 'tiles/*.tif', or {LIST_PREFIX}FILE listing one a line) "
        "with --output-dir",
    )
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="checkpoint file (.safetensors, ONNX, TorchScript, torch.export .pt2), models:/NAME@ALIAS "
        "or models:/NAME/VERSION (registry), or arch:NAME",
    )
    p.add_argument(
        "-o",
        "--output",
        type=location,
        help="labels: .tif (COG), .nii/.nii.gz (NIfTI) or .zarr; a path or an object-store URL",
    )
    p.add_argument(
        "--output-dir",
        help="segment every input into DIR/<stem>.tif (.nii.gz for NIfTI inputs) on one actor pool",
        metavar="DIR",
    )
    add_engine_arguments(p)
    for name, option in JOB_OPTIONS.items():
        add_field_option(p, SegmentConfig, name, option)
    p.add_argument("--labels", type=location, help="reference label raster: per-region IoU / Dice / accuracy")
    p.add_argument(
        "--regions", type=location, help="GeoJSON polygons: metrics per polygon instead of per block"
    )
    p.add_argument("--no-track", action="store_true", help="no MLflow run (and no per-region metrics)")


def is_batch(args: argparse.Namespace) -> bool:
    """Whether ``segment`` arguments name a batch (``--output-dir``) rather than one input with ``-o``."""
    if args.output_dir is not None:
        if args.output is not None:
            raise InputError("give -o OUTPUT for one input, or --output-dir DIR for several, not both")
        if args.labels is not None or args.regions is not None:
            raise InputError("--labels and --regions belong to one scene: give one input with -o")
        if args.probabilities is not None or args.vector is not None:
            raise InputError("--probabilities and --vector name one file: give one input with -o")
        return True
    if len(args.input) != 1 or args.output is None:
        raise InputError("give -o OUTPUT for one input, or --output-dir DIR for several inputs")
    return False


def segment_config_from_args(args: argparse.Namespace) -> SegmentConfig:
    """Build the shared job configuration from parsed arguments (one input, ``-o``)."""
    options = {name: getattr(args, name) for name in (*JOB_OPTIONS, *ENGINE_OPTIONS)}
    return SegmentConfig(input=args.input[0], model=args.model, output=args.output, **options)


def segment_configs_from_args(args: argparse.Namespace) -> list[SegmentConfig]:
    """One configuration per input of a batch: outputs ``DIR/<stem>.tif``, work folders apart."""
    inputs = expand_inputs(args.input)
    options = {name: getattr(args, name) for name in (*JOB_OPTIONS, *ENGINE_OPTIONS)}
    work = options.pop("work_dir")
    configs = []
    for source, output in zip(inputs, batch_outputs(inputs, args.output_dir)):
        work_dir = None if work is None else location(work) / f"{location(output).name}.gigaseg-work"
        configs.append(
            SegmentConfig(input=source, model=args.model, output=output, work_dir=work_dir, **options)
        )
    return configs


def engine_options_given(args: argparse.Namespace) -> dict[str, object]:
    """Engine options that differ from ``SegmentConfig``'s defaults: all a watch passes on."""
    given = {name: getattr(args, name) for name in ENGINE_OPTIONS}
    return {name: value for name, value in given.items() if value != field_default(SegmentConfig, name)}


def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gigaseg watch`` (and of ``python flows/watch_imagery.py``)."""
    p.add_argument(
        "input",
        help="folder (or fsspec URL such as s3://bucket/prefix) to scan, or a STAC catalog, collection or "
        "saved search result (.json: each item is a scene; --pattern does not apply)",
    )
    p.add_argument(
        "--output-dir",
        required=True,
        type=location,
        help="where label COGs and the ledger go: a folder or an object-store URL (s3://bucket/prefix)",
    )
    p.add_argument("-m", "--model", required=True, help="checkpoint file, or arch:NAME (untrained)")
    p.add_argument(
        "--pattern", default=WatchSettings.pattern, help="glob of scenes, relative to INPUT (e.g. '**/*.tif')"
    )
    p.add_argument("--once", action="store_true", help="process what is new, then exit")
    p.add_argument("--every", type=float, default=600.0, help="seconds between scans when serving")
    p.add_argument("--cron", help="cron schedule when serving (instead of --every)")
    p.add_argument("--name", default="scheduled", help="deployment name when serving")
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=WatchSettings.max_concurrent,
        help="scenes in flight at once on the shared pool (default: 3 on Ray, 1 in this process)",
    )
    p.add_argument(
        "--min-age",
        type=float,
        default=WatchSettings.min_age_seconds,
        help="skip files modified less than this many s ago",
    )
    p.add_argument("--quiet", action="store_true")
    add_engine_arguments(p)


#: The ``gigaseg train`` options by ``TrainSettings`` field.
TRAIN_OPTIONS: dict[str, Option] = {
    "arch": Option(
        "registered architecture (gigaseg models)", meaning="registered architecture (`gigaseg models`)"
    ),
    "epochs": Option(type=int, meaning="training epochs"),
    "steps_per_epoch": Option(type=int, meaning="optimiser steps per epoch (AdamW + one-cycle)"),
    "tile": Option(type=int, meaning="training tile size in pixels"),
    "batch_size": Option(type=int, meaning="tiles per step"),
    "lr": Option(type=float, meaning="peak learning rate"),
    "backbone_weights": Option(
        "pretrained encoder weights (.safetensors or .pth state dict, e.g. ImageNet) to start from", Path
    ),
    "loss": Option("ce, dice or ce+dice", meaning="`ce`, `dice` or `ce+dice`"),
    "aux_weight": Option(
        "one weight for every auxiliary head's loss (default: each head's weight from its paper)",
        float,
        unset="each head's paper weight",
    ),
    "balanced": Option("class-balanced tile sampling"),
    "jitter": Option("intensity jitter (gain, offset)", float),
    "patience": Option(
        "early stopping: epochs without improvement",
        int,
        meaning="early stopping (epochs without a better held-out mIoU)",
    ),
    "normalization": Option(
        "dataset (training mean/std, default), zscore or percentile (per scene: MR, EM), "
        "or window:LOW,HIGH (fixed, e.g. a CT window in HU)",
        meaning="`dataset`: mean/std of the training pixels, fixed in the card; `zscore` / `percentile`: per "
        "scene, at training and at inference (MR, EM); `window:LOW,HIGH`: fixed (CT in HU)",
    ),
    "band_names": Option(
        "the images' bands by name, in order, e.g. blue,green,red,nir (default: their band descriptions)",
        lambda text: [n.strip() for n in text.split(",")],
        metavar="NAME,…",
        unset="the images' band descriptions",
        meaning="the images' bands by name, in order, for the model card: a STAC item's assets are picked "
        "by them (`eo:bands` names or common names such as `red`, `nir`) and rasters whose band "
        "descriptions name them are matched by name in any order",
    ),
    "device": Option(meaning="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`"),
    "amp": Option(meaning="mixed precision on GPU"),
    "seed": Option(type=int, meaning="seed of the initial weights and of each epoch's sampling"),
}


def _add_train_settings(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        add_field_option(p, TrainSettings, name, TRAIN_OPTIONS[name])


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gigaseg train`` (and of ``python flows/train_model.py``)."""
    p.add_argument(
        "images",
        nargs="+",
        help="image rasters (a band stack as a.tif,b.tif,…) or volumes (NIfTI, DICOM folder, OME-Zarr, "
        "TIFF stack with --spacing) for a 3D network",
    )
    p.add_argument("--labels", required=True, nargs="+", type=Path, help="one label image per image")
    p.add_argument("--model-name", help="register the result as a new version of this MLflow model")
    p.add_argument("-o", "--output", type=Path, help="also write the checkpoint here")
    _add_train_settings(p, "arch")
    p.add_argument("--arch-config", help="architecture options as JSON, e.g. '{\"width\": 16}'")
    p.add_argument("--width", type=int, help="shortcut for the width option")
    p.add_argument("--depth", type=int, help="shortcut for the depth option")
    _add_train_settings(p, "epochs", "steps_per_epoch", "tile", "batch_size", "lr", "backbone_weights")
    _add_train_settings(p, "loss", "aux_weight", "balanced", "jitter", "patience", "normalization")
    _add_train_settings(p, "band_names")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="last part of the last axis held out (a raster's right-most columns, a volume's last x-planes)",
    )
    p.add_argument("--spacing", help="voxel size Z,Y,X in mm (or one number) for TIFF stacks")
    p.add_argument("--val-image", help="separate validation image (instead of --val-fraction)")
    p.add_argument("--val-labels", help="labels of --val-image")
    p.add_argument("--classes", help="class names, comma-separated (default: the label raster's tags)")
    p.add_argument("--work-dir", type=Path, help="stores and resumable state (default .gigaseg/train/NAME)")
    _add_train_settings(p, "device", "amp", "seed")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")


def train_settings_from_args(args: argparse.Namespace, arch_config: dict[str, Any]) -> TrainSettings:
    """The training settings of parsed ``train`` arguments (``arch_config`` parsed by the caller)."""
    options = {name: getattr(args, name) for name in TRAIN_OPTIONS}
    if options["backbone_weights"] is not None:
        options["backbone_weights"] = str(options["backbone_weights"])
    return TrainSettings(arch_config=arch_config, **options)


def add_promote_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gigaseg promote`` (and of ``python flows/promote_model.py``)."""
    p.add_argument("name", help="registered model name")
    p.add_argument("--version", type=int, help="candidate version")
    p.add_argument("--eval-image", help="evaluation scene: a file, a band stack a.tif,b.tif,… or a STAC item")
    p.add_argument("--eval-labels", type=Path, help="its reference labels")
    p.add_argument("--metric", default=EvaluationScene.metric, help="miou, mdice or accuracy")
    p.add_argument("--margin", type=float, default=0.0, help="candidate must beat the champion by this")
    p.add_argument("--force", action="store_true", help="promote regardless of the scores")
    p.add_argument("--rollback", action="store_true", help="give champion back to the previous version")
    p.add_argument(
        "--block", type=int, default=EvaluationScene.block, help="output block size for the evaluation runs"
    )
