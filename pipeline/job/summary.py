"""What a finished job reports: class fractions, per-label volumes and confidence, block counts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.exporters.formats import ExportedOutputs
from pipeline.inputs.volume_geometry import VolumeGeometry, is_volume
from pipeline.job.plan import Job

log = logging.getLogger("gigaseg")


@dataclass(frozen=True)
class BlockCounts:
    """How the blocks of a run went: computed here or on workers, resumed, retried."""

    run: int
    skipped: int
    retried: int = 0


@dataclass(frozen=True)
class LabelMetrics:
    """Per label: volume in mL (volumes only; empty for rasters) and mean winning probability."""

    volumes_ml: dict[str, float]
    mean_probability: dict[str, float]


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
    blend: str = ""
    """The blending mode the job ran (``--blend auto`` resolved for the model)."""
    resampled: str | None = None
    """``10 m/px → 20 m/px`` when the scene was resampled to the model's resolution (outputs mapped back)."""

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
        if self.resampled:
            skipped += f", run at the model's resolution ({self.resampled}) and mapped back"
        unit = "Mvox" if self.label_volumes_ml else "Mpx"
        return (
            f"wrote {self.output}: {self.pixels / 1e6:.1f} {unit}, {len(self.class_fractions)} classes "
            f"({classes}), {self.seconds:.1f} s, {self.mpx_per_s:.2f} {unit}/s{skipped}{volumes}"
        )


def class_fractions(job: Job) -> tuple[dict[str, float], int]:
    """Fraction of valid pixels per class, and the valid count.

    From the per-block label counts the engine stores with every block, so the
    labels are not read back.
    """
    counts = np.rint(job.store.label_stats()[:, 0]).astype(np.int64)
    total = int(counts.sum())
    return {n: float(c) / max(total, 1) for n, c in zip(job.card.class_names, counts)}, total


def label_metrics(job: Job) -> LabelMetrics:
    """Per label: volume in mL (volumes only; empty for rasters) and mean winning probability."""
    stats = job.store.label_stats()
    names = job.card.class_names
    mean_p = {n: float(s / c) for n, (c, s) in zip(names, stats) if c > 0}
    if not is_volume(job.scene.attrs):
        return LabelMetrics({}, mean_p)
    voxel_ml = VolumeGeometry.from_attrs(job.scene.attrs).voxel_volume_mm3 / 1000.0
    return LabelMetrics({n: float(c) * voxel_ml for n, (c, _) in zip(names, stats)}, mean_p)


def summarize(
    job: Job,
    outputs: ExportedOutputs,
    counts: BlockCounts,
    seconds: float,
    on_finished: Callable[[Job], None] | None = None,
) -> SegmentSummary:
    """Class fractions of the finished output (one warning line when every pixel was nodata).

    ``on_finished(job)`` runs here, while the stores still exist (e.g. per-region
    metrics read them); the work folder goes when the outputs are published
    (:func:`pipeline.job.steps.finish`).
    """
    fractions, valid = class_fractions(job)
    if valid == 0:
        log.warning("%s: every pixel is nodata; the output is nodata throughout", job.config.input)
    labels = label_metrics(job)
    if on_finished is not None:
        on_finished(job)
    return SegmentSummary(
        output=outputs.labels,
        probabilities=outputs.probabilities,
        pixels=int(np.prod(job.grid.shape)),
        valid_pixels=valid,
        class_fractions=fractions,
        seconds=seconds,
        blocks_run=counts.run,
        blocks_skipped=counts.skipped,
        tiles_run=int(job.timings.get("tiles", 0)),
        timings=job.timings,
        retries=counts.retried,
        label_volumes_ml=labels.volumes_ml,
        label_mean_probability=labels.mean_probability,
        blend=job.window.mode,
        resampled=job.resampling.describe() if job.resampling is not None else None,
    )
