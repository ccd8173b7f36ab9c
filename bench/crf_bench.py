"""Does the CRF help? mIoU, boundary F1 and CRF seconds per Mpx on five real labelled sets.

For each set a small network is trained with the project's trainer on one part and the held-out
part is segmented through the real pipeline (:func:`pipeline.job.steps.segment`: blocks, halo,
blending) three times: ``crf none``, ``local`` and ``dense`` (2D only), each with the CRF
defaults untouched. The CRF's own wall time comes from the engine's refinement hook
(``timings["crf"]``), per megapixel (megavoxel) of the segmented part.

``--tune`` first runs a small grid of CRF settings on the LoveDA validation strips (the right
20% of the three training halves, never trained on and not part of any reported evaluation), on the
network's probabilities from the pipeline, and prints/records the grid; the defaults in
``pipeline/engine/crf/params.py`` / ``pipeline/job/config.py`` are set from it by hand.

Run: ``python -m bench.crf_bench [--tune] [--cases loveda,nrcan,...] [--cache DIR]``; writes the
"CRF" sections of bench/RESULTS.md. Trained checkpoints are cached under ``--cache`` (outside
the repository) and reused; delete the folder to retrain.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from tifffile import imread

from bench.results import command_line, load_text, table_head, write_section
from models.checkpoint import save_checkpoint
from pipeline.engine.crf import DEFAULT_ITERATIONS, CRFParams, band_stats, refine
from pipeline.evaluation.boundary_metrics import BoundaryCounts, boundary_counts
from pipeline.evaluation.metrics import confusion, iou_per_class, nanmean
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.training.data import LabelledScene, hold_out_slab, open_pair
from pipeline.training.settings import TrainSettings
from pipeline.training.trainer import fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IGNORE = -1
LABEL_NODATA = 255
#: The small 2D network every set gets (same-padded so tiles need no extra margin).
UNET = {"width": 8, "depth": 3, "padding": "same", "batch_norm": True}
BOUNDARY_TOLERANCE = 2.0


@dataclass
class EvalItem:
    """One held-out image (a file the pipeline segments) and its reference in store order."""

    image: Path
    truth: np.ndarray
    """int64 class ids, ``IGNORE`` where unlabelled or not held out."""


@dataclass
class Case:
    """A labelled set prepared as files: what to train on and what to evaluate."""

    name: str
    classes: list[str]
    holdout: str
    evals: list[EvalItem]
    train: Callable[[Path], Path]
    """Trains (or finds in the cache) the checkpoint; gets the case's cache folder."""
    dims: int = 2
    note: str = ""
    extra_runs: list[tuple[str, dict, str]] = field(default_factory=list)
    """More (mode, CRF settings, label) runs beside none / local / dense with the defaults."""


@dataclass
class ModeResult:
    """Scores of one CRF mode on a case's held-out part."""

    mode: str
    miou: float
    bf1: float
    crf_seconds: float
    pixels: int
    job_seconds: float

    @property
    def s_per_mpx(self) -> float:
        """CRF wall time per million pixels (voxels) segmented."""
        return self.crf_seconds / (self.pixels / 1e6)


@dataclass
class CaseResult:
    """A case's three (two in 3D) runs."""

    case: Case
    train_seconds: float
    modes: list[ModeResult] = field(default_factory=list)


# --- preparing the real data as GeoTIFFs the trainer and the pipeline read ------------------


def _write_tif(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    """(B, H, W) array → GeoTIFF on a unit pixel grid (the sources here carry no usable CRS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data[None] if data.ndim == 2 else data
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(
        tmp,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        transform=from_origin(0, data.shape[1], 1, 1),
        nodata=nodata,
    ) as dst:
        dst.write(data)
    os.replace(tmp, path)
    return path


def _labels_tif(path: Path, ids: np.ndarray) -> Path:
    """Class ids (``IGNORE`` = unlabelled) as uint8 with nodata 255."""
    return _write_tif(path, np.where(ids < 0, LABEL_NODATA, ids).astype(np.uint8), LABEL_NODATA)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _trainer(
    name: str,
    scenes: Callable[[Path], list[LabelledScene]],
    classes: list[str],
    settings: TrainSettings,
) -> Callable[[Path], Path]:
    """Trains with the project's trainer on ``scenes(work folder)``, or finds the cached checkpoint."""

    def train(cache: Path) -> Path:
        checkpoint = cache / "model.safetensors"
        if checkpoint.exists():
            return checkpoint
        outcome = fit(
            scenes(cache / "train"), settings, len(classes), classes, state_dir=cache / "state", log=print
        )
        tmp = checkpoint.with_suffix(".tmp.safetensors")
        save_checkpoint(tmp, outcome.model, outcome.card)
        (cache / "train_seconds.txt").write_text(f"{outcome.seconds:.1f}\n")
        os.replace(tmp, checkpoint)
        print(f"{name}: trained in {outcome.seconds:.0f} s, validation mIoU {outcome.best.miou:.3f}")
        return checkpoint

    return train


def _train_2d(
    name: str, pairs: list[tuple[Path, Path, float]], classes: list[str], epochs: int, balanced: bool = False
) -> Callable[[Path], Path]:
    """A trainer for image/label pairs, each with its right-most ``val_fraction`` for early stopping."""
    settings = TrainSettings(
        arch="unet",
        arch_config=UNET,
        tile=128,
        batch_size=8,
        epochs=epochs,
        steps_per_epoch=50,
        lr=3e-3,
        patience=epochs,
        balanced=balanced,
        device="cpu",
    )
    return _trainer(
        name,
        lambda work: [open_pair(i, lab, work, f, chunk=256)[0] for i, lab, f in pairs],
        classes,
        settings,
    )


LOVEDA_CLASSES = ["background", "building", "road", "water", "barren", "forest", "agriculture"]


def loveda(shared: Path, work: Path, epochs: int) -> Case:
    """Left halves of the three tiles train (their right 20% for early stopping); right halves are held out.

    Halves, not "train on two tiles, test on the third": each tile is a different scene (urban,
    rural) and a few-minute CPU model does not carry over (tile 2 from tiles 0, 1: mIoU 0.03).
    """
    src = shared / "satellite" / "loveda"
    pairs, evals = [], []
    for i in range(3):
        image = _read(src / f"image_{i}.png")
        ids = _read(src / f"mask_{i}.png")[0].astype(np.int64) - 1  # 0 = no label → IGNORE
        half = image.shape[2] // 2
        pairs.append(
            (
                _write_tif(work / f"train_image_{i}.tif", image[:, :, :half]),
                _labels_tif(work / f"train_labels_{i}.tif", ids[:, :half]),
                VAL_FRACTION,
            )
        )
        evals.append(EvalItem(_write_tif(work / f"eval_image_{i}.tif", image[:, :, half:]), ids[:, half:]))
    return Case(
        "loveda",
        LOVEDA_CLASSES,
        "right halves of tiles 0–2",
        evals,
        _train_2d("loveda", pairs, LOVEDA_CLASSES, epochs),
    )


VAL_FRACTION = 0.2


def loveda_validation(case: Case, work: Path) -> list[tuple[Path, np.ndarray, slice]]:
    """The tuning data: LoveDA's training halves with their validation strip (right 20% of columns)."""
    out = []
    for i in range(3):
        ids = _read(work / f"train_labels_{i}.tif")[0].astype(np.int64)
        ids[ids == LABEL_NODATA] = IGNORE
        width = ids.shape[1]
        out.append((work / f"train_image_{i}.tif", ids, slice(round(width * (1 - VAL_FRACTION)), width)))
    return out


def nrcan(shared: Path, work: Path, epochs: int) -> Case:
    """Train on image_1 and the top half of image_2; the bottom half of image_2 is held out.

    Buildings are ~1.5% of the pixels and all in the left-hand columns, so left/right halves
    would hold out no building, and a model trained on image_1 alone finds none in image_2 (a
    different scene at twice the resolution). Each training image is turned a quarter so that the
    trainer's right-hand validation strip holds buildings too (else the "best" epoch is the one
    predicting none). Sampling is class-balanced.
    """
    src = shared / "satellite" / "nrcan_aerial"
    image_1, ids_1 = _read(src / "image_1.tif"), _read(src / "label_1.tif")[0].astype(np.int64)
    image_2, ids_2 = _read(src / "image_2.tif"), _read(src / "label_2.tif")[0].astype(np.int64)
    half = image_2.shape[1] // 2
    pairs = []
    # image_1: buildings in its top rows → clockwise; image_2's top half: in its lower rows → anticlockwise.
    for name, img, ids, k in (("1", image_1, ids_1, -1), ("2_top", image_2[:, :half], ids_2[:half], 1)):
        pairs.append(
            (
                _write_tif(
                    work / f"train_image_{name}.tif", np.ascontiguousarray(np.rot90(img, k, axes=(1, 2)))
                ),
                _labels_tif(work / f"train_labels_{name}.tif", np.ascontiguousarray(np.rot90(ids, k))),
                0.2,
            )
        )
    classes = ["background", "building"]  # the labels' nodata tag 0 is the background class
    return Case(
        "nrcan",
        classes,
        "bottom half of image_2 (trained on image_1, top of image_2)",
        [EvalItem(_write_tif(work / "eval_image.tif", image_2[:, half:]), ids_2[half:])],
        _train_2d("nrcan", pairs, classes, epochs, balanced=True),
        note="the small model finds no building in the held-out half (its building probability stays "
        "below 0.5 there, 99.9th percentile 0.36; buildings are 0.9% of it), so there is no boundary "
        "to score (BF1 n/a) and no CRF setting changes a label — a failure of the few-minute model, "
        "not a CRF result",
    )


LANDSAT_BANDS = (10, 20, 30, 40, 50, 70)
LANDSAT_CLASSES = [f"landclass {i}" for i in range(1, 8)]


def landsat(shared: Path, work: Path, epochs: int) -> Case:
    """Six ETM+ bands (float32, nodata −99999); the left 60% of columns train, the rest is evaluated."""
    src = shared / "satellite" / "landsat7_nc"
    bands, valid = [], None
    for b in LANDSAT_BANDS:
        with rasterio.open(src / f"lsat7_2000_{b}.tif") as ds:
            a = ds.read(1).astype(np.float32)
            ok = a != ds.nodata
        bands.append(a)
        valid = ok if valid is None else valid & ok
    image = np.where(valid, np.stack(bands), -99999.0).astype(np.float32)
    with rasterio.open(src / "landclass96.tif") as ds:
        lc = ds.read(1)
        ids = np.where(lc == ds.nodata, IGNORE, np.rint(lc) - 1).astype(np.int64)
    ids[~valid] = IGNORE
    split = round(image.shape[2] * 0.6)
    train = (
        _write_tif(work / "train_image.tif", image[:, :, :split], -99999.0),
        _labels_tif(work / "train_labels.tif", ids[:, :split]),
        0.25,
    )
    evals = [EvalItem(_write_tif(work / "eval_image.tif", image[:, :, split:], -99999.0), ids[:, split:])]
    return Case(
        "landsat",
        LANDSAT_CLASSES,
        "right 40% of columns",
        evals,
        _train_2d("landsat", [train], LANDSAT_CLASSES, epochs),
        note="CRF appearance on the default bands 0–2 (ETM+ 1–3: blue, green, red), and on 3, 2, 1 "
        "(ETM+ 4, 3, 2: NIR, red, green) in the rows that say so",
        extra_runs=[
            (mode, {"bands": (3, 2, 1)}, f"{mode}, bands NIR-red-green") for mode in ("local", "dense")
        ],
    )


def isbi(shared: Path, work: Path, epochs: int) -> Case:
    """Slices 0–19 train (each slice's right 20% for early stopping), slices 20–29 are evaluated."""
    src = shared / "medical" / "isbi2012"
    pages, labels = imread(src / "train-volume.tif"), imread(src / "train-labels.tif")
    classes = ["membrane", "cell"]
    pairs, evals = [], []
    for k, (img, lab) in enumerate(zip(pages, labels)):
        ids = (lab > 127).astype(np.int64)
        if k < 20:
            pairs.append(
                (_write_tif(work / f"train_{k}.tif", img), _labels_tif(work / f"labels_{k}.tif", ids), 0.2)
            )
        else:
            evals.append(EvalItem(_write_tif(work / f"eval_{k}.tif", img), ids))
    return Case(
        "isbi", classes, "slices 20–29 (trained on 0–19)", evals, _train_2d("isbi", pairs, classes, epochs)
    )


def hippocampus(shared: Path, work: Path, epochs: int) -> Case:
    """3D: the last 40% of slices held out; local CRF only.

    Their labels reach neither the loss nor the choice of the kept epoch, which is made on the
    20% of the other slices next to them.
    """
    src = shared / "medical" / "hippocampus"
    truth = np.asarray(nib.load(src / "labels.nii.gz").dataobj).transpose(2, 1, 0).astype(np.int64)
    slices = truth.shape[0]
    start = round(slices * 0.6)
    held = np.zeros(truth.shape, dtype=bool)
    held[start:] = True
    classes = ["background", "anterior", "posterior"]
    settings = TrainSettings(
        arch="unet3d",
        arch_config={"width": 8, "depth": 2, "padding": "same"},
        tile=32,
        batch_size=2,
        epochs=epochs,
        steps_per_epoch=50,
        lr=3e-3,
        patience=epochs,
        normalization="zscore",
        device="cpu",
    )

    def scenes(train_work: Path) -> list[LabelledScene]:
        scene, _ = open_pair(src / "image.nii.gz", src / "labels.nii.gz", train_work, 0.0)
        return [hold_out_slab(scene, 0, start, slices, VAL_FRACTION)[0]]

    return Case(
        "hippocampus",
        classes,
        "last 40% of slices",
        [EvalItem(src / "image.nii.gz", np.where(held, truth, IGNORE))],
        _trainer("hippocampus", scenes, classes, settings),
        dims=3,
    )


# --- segmenting through the pipeline and scoring ---------------------------------------------


def _predicted(output: Path, dims: int) -> np.ndarray:
    if dims == 3:
        return np.asarray(nib.load(output).dataobj).transpose(2, 1, 0).astype(np.int64)
    return _read(output)[0].astype(np.int64)


def run_mode(
    case: Case,
    checkpoint: Path,
    cache: Path,
    mode: str,
    settings: dict | None = None,
    label: str | None = None,
) -> ModeResult:
    """Segment every held-out item with ``--crf mode`` and score the result.

    ``settings``: CRF parameters to set (names as in :class:`CRFParams`); None keeps the defaults.
    """
    label = label or mode
    crf_options = {f"crf_{k}": v for k, v in (settings or {}).items()}
    num = len(case.classes)
    cm = np.zeros((num, num), dtype=np.int64)
    bc = BoundaryCounts()
    crf_s = job_s = 0.0
    pixels = 0
    for k, item in enumerate(case.evals):
        suffix = ".nii.gz" if case.dims == 3 else ".tif"
        out = cache / "out" / f"{k}_{label.replace(' ', '_')}{suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = segment(
            SegmentConfig(
                input=item.image,
                model=str(checkpoint),
                output=out,
                overwrite=True,
                quiet=True,
                tile=256 if case.dims == 2 else 32,
                block=512,
                chunk=256,
                volume_block=64,
                volume_chunk=32,
                threads=1,
                device="cpu",
                crf=mode,
                work_dir=cache / "work" / f"{k}_{label.replace(' ', '_')}",
                **crf_options,
            )
        )
        pred = _predicted(out, case.dims)
        cm += confusion(pred.ravel(), item.truth.ravel(), num)
        bc = bc + boundary_counts(pred, item.truth, BOUNDARY_TOLERANCE, ignore=IGNORE)
        crf_s += summary.timings.get("crf", 0.0)
        job_s += summary.seconds
        pixels += summary.pixels
    present = cm.sum(1) > 0
    miou = nanmean([v if present[i] else float("nan") for i, v in enumerate(iou_per_class(cm))])
    return ModeResult(label, miou, bc.f1, crf_s, pixels, job_s)


def run_case(case: Case, cache: Path) -> CaseResult:
    """Train (or reuse) the case's model, then segment the held-out part with each CRF mode."""
    checkpoint = case.train(cache)
    seconds = cache / "train_seconds.txt"
    result = CaseResult(case, float(seconds.read_text()) if seconds.exists() else float("nan"))
    runs = [("none", None, None)]
    for mode in ("local", "dense") if case.dims == 2 else ("local",):
        runs += [(mode, None, None), (mode, DEEPLAB_START, f"{mode} (DeepLab values)")]
    runs += case.extra_runs
    for mode, settings, label in runs:
        result.modes.append(run_mode(case, checkpoint, cache, mode, settings, label))
        r = result.modes[-1]
        print(
            f"{case.name} {r.mode}: mIoU {r.miou:.4f} BF1 {r.bf1:.4f} crf {r.s_per_mpx:.2f} s/Mpx", flush=True
        )
    return result


# --- tuning on the LoveDA validation strips --------------------------------------------------


@dataclass
class TuneData:
    """Pipeline probabilities, raw image and reference of one validation strip."""

    probs: np.ndarray
    image: np.ndarray
    truth: np.ndarray
    low: tuple[float, ...]
    high: tuple[float, ...]


def tuning_data(case: Case, checkpoint: Path, cache: Path, work: Path) -> list[TuneData]:
    """Pipeline probabilities (crf none) of LoveDA's training halves, cut to their validation strips."""
    data = []
    for k, (image_path, ids, cols) in enumerate(loveda_validation(case, work)):
        probs_path = cache / "tune" / f"probs_{k}.tif"
        if not probs_path.exists():
            probs_path.parent.mkdir(parents=True, exist_ok=True)
            segment(
                SegmentConfig(
                    input=image_path,
                    model=str(checkpoint),
                    output=cache / "tune" / f"labels_{k}.tif",
                    probabilities=probs_path,
                    overwrite=True,
                    quiet=True,
                    tile=256,
                    block=512,
                    chunk=256,
                    threads=1,
                    device="cpu",
                    work_dir=cache / "work" / f"tune_{k}",
                )
            )
        image = _read(image_path).astype(np.float32)
        low, high = band_stats(image, bands=(0, 1, 2))  # scene-wide, as the pipeline computes them
        data.append(TuneData(_read(probs_path)[:, :, cols], image[:, :, cols], ids[:, cols], low, high))
    return data


def score(data: list[TuneData], params: CRFParams | None, classes: int) -> tuple[float, float, float]:
    """(mIoU, boundary F1, CRF seconds per Mpx) of ``params`` (None: no CRF) on the strips."""
    cm = np.zeros((classes, classes), dtype=np.int64)
    bc = BoundaryCounts()
    seconds, pixels = 0.0, 0
    for d in data:
        probs = d.probs
        if params is not None:
            p = replace(params, bands=(0, 1, 2), band_low=d.low, band_high=d.high)
            t0 = time.perf_counter()
            probs = np.asarray(refine(torch.from_numpy(d.probs), torch.from_numpy(d.image), None, p))
            seconds += time.perf_counter() - t0
        pred = probs.argmax(0)
        cm += confusion(pred.ravel(), d.truth.ravel(), classes)
        bc = bc + boundary_counts(pred, d.truth, BOUNDARY_TOLERANCE, ignore=IGNORE)
        pixels += d.truth.size
    present = cm.sum(1) > 0
    miou = nanmean([v if present[i] else float("nan") for i, v in enumerate(iou_per_class(cm))])
    return miou, bc.f1, seconds / (pixels / 1e6)


#: Where the staged grid starts: DeepLab's cross-validated values (w2 = 3, σγ = 3; w1, σα, σβ at
#: the low end of its ranges) with 5 iterations in a radius-4 window.
DEEPLAB_START = {
    "iterations": 5,
    "radius": 4.0,
    "smooth_weight": 3.0,
    "smooth_sigma": 3.0,
    "appearance_weight": 5.0,
    "appearance_sigma_pos": 50.0,
    "appearance_sigma_feat": 5.0,
}


def tuning_grid(mode: str) -> Iterable[dict]:
    """Staged grid: appearance (w1, σβ), then smoothness (w2, σγ), then reach / σα and iterations.

    Each stage varies its parameters over the values below with the others at the best of the
    stages before (starting from the DeepLab-derived settings).
    """
    yield {
        "stage": "appearance",
        "grid": {"appearance_weight": [0, 1, 3, 5, 10], "appearance_sigma_feat": [3, 5, 10, 20]},
    }
    yield {"stage": "smoothness", "grid": {"smooth_weight": [0, 1, 3, 5], "smooth_sigma": [1, 3]}}
    if mode == "local":
        yield {"stage": "window", "grid": {"iterations": [2, 5, 10], "radius": [2, 4, 6]}}
    else:
        yield {"stage": "window", "grid": {"iterations": [5, 10], "appearance_sigma_pos": [20, 50, 80]}}


def tune(data: list[TuneData], classes: int, mode: str) -> tuple[list[str], CRFParams]:
    """Run the staged grid; returns table rows and the best settings (by mIoU + boundary F1)."""
    best = CRFParams(mode=mode, **DEEPLAB_START)
    base = score(data, None, classes)
    rows = [f"| {mode} | — | no CRF | {base[0]:.4f} | {base[1]:.4f} | — |"]
    print(rows[0], flush=True)
    best_score = -np.inf
    for stage in tuning_grid(mode):
        names = list(stage["grid"])
        start = best
        for values in itertools.product(*stage["grid"].values()):
            params = replace(start, **dict(zip(names, values)))
            miou, bf1, spm = score(data, params, classes)
            text = ", ".join(f"{n}={v}" for n, v in zip(names, values))
            rows.append(f"| {mode} | {stage['stage']} | {text} | {miou:.4f} | {bf1:.4f} | {spm:.2f} |")
            print(rows[-1], flush=True)
            if miou + bf1 > best_score + 1e-9:
                best_score, best = miou + bf1, params
    return rows, best


# --- the command -----------------------------------------------------------------------------

CASES = {"loveda": loveda, "nrcan": nrcan, "landsat": landsat, "isbi": isbi, "hippocampus": hippocampus}
EPOCHS = {"loveda": 6, "nrcan": 10, "landsat": 3, "isbi": 3, "hippocampus": 4}


def _num(value: float, spec: str = ".4f") -> str:
    return "n/a" if np.isnan(value) else format(value, spec)


def _machine(load0: float) -> str:
    return (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU, "
        f"torch {torch.__version__}, 1 torch thread per job; shared with other work: "
        f"{load_text(load0, os.getloadavg()[0])} (times are wall clock under that load)  "
    )


def _defaults_text() -> str:
    p = CRFParams()
    return (
        f"CRF defaults (pipeline/engine/crf/params.py, SegmentConfig): iterations "
        f"{DEFAULT_ITERATIONS['local']} local / "
        f"{DEFAULT_ITERATIONS['dense']} dense, radius {p.radius} "
        f"({p.window}), w2 {p.smooth_weight}, σγ {p.smooth_sigma}, w1 {p.appearance_weight}, "
        f"σα {p.appearance_sigma_pos}, σβ {p.appearance_sigma_feat} — DenseCRF's best of the LoveDA tuning "
        f"grid (section below); the local CRF keeps 5 iterations in a radius-4 window (its grid's best, "
        f"10 × radius 6, differed by ≤ 0.003 in mIoU and boundary F1 for 4× the time)  "
    )


METHOD = (
    "Per set a U-Net (width 8, depth 3, batch norm, same padding; 3D: width 8, depth 2) is trained from "
    "scratch on CPU with the project's trainer (128-px tiles, batch 8, 50 steps/epoch, AdamW one-cycle; "
    "the best epoch on the training images' own right-hand validation strip is kept), then the held-out "
    "part is segmented by `pipeline.job.steps` (256-px tiles, 25% overlap, Gaussian blending, 512-px blocks "
    "plus the CRF's halo; 3D: 32³ tiles, 64³ blocks) with `--crf none|local|dense` and the CRF defaults "
    "untouched. 3D training: patches of up to 32 voxels a side, batch 2, 4 epochs; the held-out slices' "
    "labels stay out of the loss and of the epoch choice (made on the 20% of the other slices next to "
    "them). mIoU over the classes present in the reference; boundary F1 = harmonic mean of the shares of "
    "predicted / reference boundary pixels within 2 px (voxels) of a boundary of the other "
    "(Csurka et al. 2013), unlabelled pixels excluded. CRF s/Mpx: the refinement hook's own wall time "
    "(block + halo) over the segmented pixels, 1 thread."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/gigaseg-crf-bench"))
    parser.add_argument("--tune", action="store_true", help="run the tuning grid on LoveDA validation strips")
    parser.add_argument("--tune-only", action="store_true", help="only the tuning grid")
    parser.add_argument("--train-only", action="store_true", help="only train (and cache) the models")
    return parser


def _header(command: str, load0: float) -> list[str]:
    """The first lines of a section: command, date, machine."""
    return [f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M')}  ", _machine(load0)]


def run_tuning(cache: Path, load0: float) -> None:
    """The staged grid for both CRF modes on LoveDA's validation strips; writes the tuning section."""
    work = cache / "loveda" / "data"
    case = loveda(SHARED, work, EPOCHS["loveda"])
    checkpoint = case.train(cache / "loveda")
    data = tuning_data(case, checkpoint, cache / "loveda", work)
    rows = []
    chosen = {}
    for mode in ("local", "dense"):
        mode_rows, best = tune(data, len(case.classes), mode)
        rows += mode_rows
        chosen[mode] = best
    body = "\n".join(
        [
            *_header("python -m bench.crf_bench --tune-only", load0),
            "Tuning set: LoveDA validation strips (right 20% of the left halves of tiles 0–2, "
            "3 × 1024×102 px; held out from training, used only for early stopping), the bench's "
            "LoveDA model's probabilities from "
            "the pipeline (`--crf none --probabilities`), CRF applied with "
            "`pipeline.engine.crf.refine` and "
            "scene-wide band statistics as the pipeline does. Staged grid: each stage varies its "
            "parameters with the rest at the best so far (start: the DeepLab-derived settings); "
            "criterion mIoU + boundary F1.  ",
            *[f"Best {m}: {best!r}  " for m, best in chosen.items()],
            "",
            *table_head("mode", "stage", "setting", "mIoU", "boundary F1", "CRF s/Mpx"),
            *rows,
        ]
    )
    write_section("CRF tuning grid (LoveDA validation strips)", body)
    print(body)


def results_table(results: list[CaseResult]) -> list[str]:
    """One row per set and mode, with the change against ``crf none``."""
    lines = table_head(
        "set", "held out", "classes", "train (s)", "mode", "mIoU", "Δ mIoU", "boundary F1", "Δ BF1",
        "CRF s/Mpx", "job (s)",
    )  # fmt: skip
    for r in results:
        base = r.modes[0]
        for m in r.modes:
            delta = m.mode != "none"
            lines.append(
                f"| {r.case.name} | {r.case.holdout} | {len(r.case.classes)} | {r.train_seconds:.0f} "
                f"| {m.mode} | "
                f"{m.miou:.4f} | {f'{m.miou - base.miou:+.4f}' if delta else '—'} | {_num(m.bf1)} | "
                f"{_num(m.bf1 - base.bf1, '+.4f') if delta else '—'} | "
                f"{f'{m.s_per_mpx:.2f}' if delta else '—'} | {m.job_seconds:.1f} |"
            )
    return lines


def run_cases(names: list[str], cache: Path, command: str, load0: float) -> None:
    """Every named set with the CRF defaults; writes the results section."""
    results = [
        run_case(CASES[name](SHARED, cache / name / "data", EPOCHS[name]), cache / name) for name in names
    ]
    notes = [f"- {r.case.name}: {r.case.note}" for r in results if r.case.note]
    body = "\n".join(
        [*_header(command, load0), _defaults_text(), METHOD, "", *results_table(results), "", *notes]
    )
    write_section("CRF on real data (defaults)", body)
    print(body)


def main() -> None:
    args = build_parser().parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the shared real data is not here; nothing to benchmark")
    torch.set_num_threads(1)
    names = args.cases.split(",") if args.cases else list(CASES)
    load0 = os.getloadavg()[0]
    command = command_line("bench.crf_bench", ["--cases", args.cases] if args.cases else [])
    if args.tune or args.tune_only:
        run_tuning(args.cache, load0)
        if args.tune_only:
            return
    if args.train_only:
        for name in names:
            CASES[name](SHARED, args.cache / name / "data", EPOCHS[name]).train(args.cache / name)
        return
    run_cases(names, args.cache, command, load0)


if __name__ == "__main__":
    main()
