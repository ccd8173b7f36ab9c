"""The medical demo: train a small 3D U-Net on part of a real volume, segment it all, score the rest.

Cases:

- ``mni152``: the MNI152 T1 template that ships inside nilearn (no download),
  labels grey matter / white matter / other from the template's own GM and WM
  probability maps (a voxel is GM or WM where that map is ≥ 0.5 and the larger
  of the two, else other). The left hemisphere (world x < 0) is held out.
- ``hippocampus`` and ``ct`` from ``../shared/data/medical`` when present: the
  MSD hippocampus crop (anterior / posterior) and the TotalSegmentator CT crop
  (its three largest labels by voxel count plus "other labels"), the last 40% of slices
  held out; the CT model's card uses a Hounsfield window.

Each case goes through the product path: the trainer ``gigaseg train`` uses
(:func:`pipeline.training.trainer.fit`) on the rest of the volume, the held-out part's
labels reaching neither the loss nor the choice of the kept epoch (that is made
on a validation strip of the training part, next to the held-out part); then
``segment`` with blocks and Gaussian blending, NIfTI out with the input's
affine, Dice on the held-out voxels read back from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from models.checkpoint import save_checkpoint
from pipeline.evaluation.metrics import confusion, dice_per_class
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.job.summary import SegmentSummary
from pipeline.tiling import regions
from pipeline.tiling.grid import Region
from pipeline.training.data import hold_out_slab, open_pair
from pipeline.training.settings import TrainSettings
from pipeline.training.trainer import TrainOutcome, fit
from pipeline.training.validation import EpochResult

MNI_CLASSES = ["other", "grey matter", "white matter"]
MNI_COLORS = [(0, 0, 0), (200, 120, 120), (240, 240, 240)]
VAL_FRACTION = 0.2
"""Share of the training part (next to the held-out part) that picks the kept epoch."""
STEPS_PER_EPOCH = 50

Slab = tuple[int, int, int]
"""(store axis, start, stop): a held-out slab at one end of that axis."""


@dataclass
class VolumeCase:
    """A labelled volume and how to split and normalise it."""

    name: str
    image: Path
    labels: Path
    class_names: list[str]
    normalization: str
    """As ``gigaseg train --normalization``: zscore, percentile, window:LOW,HIGH or dataset."""
    holdout: Callable[[tuple[int, ...], np.ndarray], Slab]
    """(store-order shape, affine) → the held-out slab."""
    holdout_text: str
    class_colors: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class CaseResult:
    """Dice per class on the held-out voxels, and what it cost."""

    name: str
    shape: tuple[int, ...]
    holdout: str
    dice: dict[str, float]
    train_seconds: float
    epochs: int
    steps_per_epoch: int
    best_epoch: int
    segment: SegmentSummary
    output: Path


def _store_order(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj).transpose(2, 1, 0)


def mni152_case(workdir: Path, resolution: int = 2) -> VolumeCase:
    """Write the nilearn MNI152 T1 template and its GM/WM/other labels as NIfTI files."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[(gm >= 0.5) & (gm >= wm)] = 1
    labels[(wm >= 0.5) & (wm > gm)] = 2
    image_path = workdir / f"mni152_t1_{resolution}mm.nii.gz"
    labels_path = workdir / f"mni152_gm_wm_{resolution}mm.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32), t1.affine), str(image_path))
    nib.save(nib.Nifti1Image(labels, t1.affine), str(labels_path))

    def left_hemisphere(shape: tuple[int, ...], affine: np.ndarray) -> Slab:
        i = np.arange(shape[2])  # store axis 2 is NIfTI i; x is monotonic in i on this template's grid
        left = np.flatnonzero(affine[0, 0] * i + affine[0, 3] < 0)
        return 2, int(left[0]), int(left[-1]) + 1

    return VolumeCase(
        "mni152",
        image_path,
        labels_path,
        MNI_CLASSES,
        "zscore",
        left_hemisphere,
        "left hemisphere (x < 0)",
        MNI_COLORS,
    )


def _last_slices(fraction: float) -> Callable[[tuple[int, ...], np.ndarray], Slab]:
    def slab(shape: tuple[int, ...], affine: np.ndarray) -> Slab:
        return 0, round(shape[0] * (1 - fraction)), shape[0]

    return slab


def shared_cases(shared: Path, workdir: Path) -> list[VolumeCase]:
    """The hippocampus and CT cases from ``../shared/data/medical`` (empty when absent)."""
    medical = shared / "medical"
    cases = []
    hip = medical / "hippocampus"
    if (hip / "image.nii.gz").exists():
        cases.append(
            VolumeCase(
                "hippocampus",
                hip / "image.nii.gz",
                hip / "labels.nii.gz",
                ["background", "anterior", "posterior"],
                "zscore",
                _last_slices(0.4),
                "last 40% of slices",
            )
        )
    ct = medical / "totalsegmentator"
    if (ct / "ct.nii.gz").exists():
        ref = nib.load(ct / "labels.nii.gz")
        raw = np.asarray(ref.dataobj)
        counts = np.bincount(raw.ravel())
        top = [int(v) for v in np.argsort(counts[1:])[::-1][:3] + 1]
        grouped = np.where(raw > 0, 4, 0).astype(np.uint8)
        for new, old in enumerate(top, start=1):
            grouped[raw == old] = new
        path = workdir / "ct_labels_grouped.nii.gz"
        nib.save(nib.Nifti1Image(grouped, ref.affine, ref.header), str(path))
        cases.append(
            VolumeCase(
                "ct",
                ct / "ct.nii.gz",
                path,
                ["background", *[f"label {v}" for v in top], "other labels"],
                "window:-200,300",
                _last_slices(0.4),
                "last 40% of slices",
            )
        )
    return cases


def epochs_for(steps: int) -> tuple[int, int]:
    """Epochs and steps per epoch for about ``steps`` optimiser steps (at least that many, epochs of ≤ 50)."""
    epochs = -(-steps // STEPS_PER_EPOCH)
    return epochs, -(-steps // epochs)


def train_case(
    case: VolumeCase,
    workdir: Path,
    checkpoint: Path,
    steps: int = 300,
    width: int = 4,
    patch: int = 32,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainOutcome, Region]:
    """Fit a 3D U-Net on the case's volume except its held-out slab; save it; return it and the slab."""
    scene, _ = open_pair(case.image, case.labels, workdir / "stores", val_fraction=0.0)
    axis, start, stop = case.holdout(scene.image.spatial_shape, nib.load(case.image).affine)
    scene, held = hold_out_slab(scene, axis, start, stop, VAL_FRACTION)
    epochs, per_epoch = epochs_for(steps)
    settings = TrainSettings(
        arch="unet3d",
        arch_config={"width": width, "depth": 2, "padding": "same"},
        tile=patch,
        batch_size=2,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        lr=3e-3,
        patience=epochs,
        seed=seed,
        normalization=case.normalization,
    )

    def report(r: EpochResult) -> None:
        if log:
            log(
                f"{case.name}: epoch {r.epoch}/{epochs}: loss {r.train_loss:.3f}, "
                f"validation-strip mIoU {r.miou:.3f}"
            )

    outcome = fit(
        [scene], settings, len(case.class_names), case.class_names, case.class_colors or None, on_epoch=report
    )
    save_checkpoint(checkpoint, outcome.model, outcome.card)
    return outcome, held


def run_case(
    case: VolumeCase,
    workdir: Path,
    steps: int = 300,
    width: int = 4,
    patch: int = 32,
    seed: int = 0,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
) -> CaseResult:
    """Train on the case's training part, segment the whole volume, Dice on the held-out part."""
    checkpoint = workdir / f"{case.name}_unet3d.safetensors"
    trained, held = train_case(case, workdir, checkpoint, steps, width, patch, seed, log)
    output = workdir / f"{case.name}_labels.nii.gz"
    summary = segment(
        SegmentConfig(
            input=case.image,
            model=str(checkpoint),
            output=output,
            overwrite=True,
            quiet=quiet,
            tile=48,
            volume_block=64,
        )
    )
    img, out = nib.load(case.image), nib.load(output)
    if not np.array_equal(out.affine, img.affine) or out.shape != img.shape[:3]:
        raise RuntimeError(f"{output}: affine or shape differ from {case.image}")
    sl = regions.slices(held)
    pred, truth = _store_order(out)[sl], _store_order(nib.load(case.labels))[sl]
    cm = confusion(pred.astype(np.int64).ravel(), truth.astype(np.int64).ravel(), len(case.class_names))
    dice = [float(v) for v in dice_per_class(cm)]
    return CaseResult(
        case.name,
        tuple(img.shape),
        case.holdout_text,
        dict(zip(case.class_names, dice)),
        trained.seconds,
        len(trained.history),
        epochs_for(steps)[1],
        trained.best_epoch,
        summary,
        output,
    )


def run_demo(
    workdir: Path,
    shared: Path | None = None,
    steps: int = 300,
    resolution: int = 2,
    seed: int = 0,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
    names: Sequence[str] | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """MNI152 and the shared medical cases (when ``shared`` holds them); ``names`` picks some."""
    workdir.mkdir(parents=True, exist_ok=True)
    cases = [mni152_case(workdir, resolution)] if names is None or "mni152" in names else []
    if shared is not None and shared.is_dir():
        cases += [c for c in shared_cases(shared, workdir) if names is None or c.name in names]
    results = []
    for case in cases:
        t0 = time.perf_counter()
        if log:
            epochs, per_epoch = epochs_for(steps)
            log(
                f"{case.name}: training a width-4 3D U-Net for {epochs} epochs of {per_epoch} steps, "
                f"holding out {case.holdout_text}"
            )
        results.append(run_case(case, workdir, steps=steps, seed=seed, quiet=quiet, log=log))
        if on_result:
            on_result(results[-1])
        if log:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in results[-1].dice.items())
            log(f"{case.name}: Dice on held-out voxels: {dice} ({time.perf_counter() - t0:.0f} s)")
    return results
