"""Fit any registered architecture on labelled scenes: epochs, validation, early stopping, resuming.

Rasters train 2D networks, volumes 3D networks, with the same loop. Each epoch
draws ``steps_per_epoch`` batches of tiles or patches (:class:`TileSampler`,
optionally class-balanced), normalised with per-band statistics of the training
pixels (or per scene: ``--normalization zscore|percentile``, or a fixed window),
augmented (90° rotations, flips, intensity jitter), and minimises
cross-entropy and/or Dice (plus auxiliary heads where the network has them).
After each epoch the held-out regions are predicted whole (window by window)
for a confusion matrix, per-class IoU and Dice. The best epoch's weights are
kept; training stops after ``patience`` epochs without improvement.

Resuming: after every epoch the state (weights, optimiser, scheduler, history)
is written to ``state_dir`` — a rerun with the same data and settings continues
after the last finished epoch; numbers are drawn from generators seeded by
(seed, epoch), so a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import SegmentationModel, build
from models.backbones import BackboneWeightsError, load_backbone_weights
from models.checkpoint import ModelCard, default_colors, save_checkpoint
from pipeline.engine.device import autocast_dtype, select_device
from pipeline.errors import InputError
from pipeline.inputs.normalization import normalization_spec, normalize, resolve_normalization
from pipeline.inputs.resolution import training_resolution
from pipeline.training.data import IGNORE, LabelledScene, TileSampler, augment, band_statistics
from pipeline.training.losses import segmentation_loss
from pipeline.training.progress import StateFiles, TrainProgress, state_key
from pipeline.training.settings import TrainSettings, auxiliary_loss_weights, get_spec_or_fail
from pipeline.training.validation import EpochResult, validate_held_out


def load_pretrained_backbone(model: torch.nn.Module, path: Path, log: Callable[[str], None] | None) -> None:
    """Initialise the encoder from pretrained weights (e.g. ImageNet), as the papers do."""
    if not path.is_file():
        raise InputError(f"{path}: no such backbone weights file")
    try:
        ignored = load_backbone_weights(model, path)
    except (BackboneWeightsError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None
    if log:
        log(f"backbone initialised from {path.name} ({len(ignored)} classifier keys ignored)")


def batch_loss(
    model: SegmentationModel,
    xb: torch.Tensor,
    yb: torch.Tensor,
    kind: str,
    aux_weights: Sequence[float],
    se_weight: float = 0.0,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Training loss of one batch: the main output, each auxiliary head and any SE loss."""
    with torch.autocast(xb.device.type, dtype=amp, enabled=amp is not None):
        out = model(xb)
    return segmentation_loss(out, yb, kind, aux_weights, ignore_index=IGNORE, se_weight=se_weight)


@dataclass
class TrainOutcome:
    """The best model, its card and how training went."""

    model: SegmentationModel
    card: ModelCard
    history: list[EpochResult]
    best_epoch: int
    confusion: np.ndarray
    stopped_early: bool
    resumed_epochs: int
    preview: dict[str, np.ndarray]
    seconds: float

    @property
    def best(self) -> EpochResult:
        """The epoch whose weights were kept."""
        return next(h for h in self.history if h.epoch == self.best_epoch)


@dataclass
class TrainingData:
    """The checked training scenes with their classes, input channels and normalisation."""

    scenes: list[LabelledScene]
    num_classes: int
    class_names: list[str]
    class_colors: list[tuple[int, ...]]
    in_channels: int
    spatial_dims: int
    normalization: dict[str, Any] | None = None
    """The card's normalisation (``dataset``: the training pixels' mean/std)."""
    scene_normalizations: list[dict[str, Any]] = field(default_factory=list)
    """The card's normalisation resolved on each scene (per-scene kinds)."""


def check_training_data(
    scenes: list[LabelledScene],
    settings: TrainSettings,
    num_classes: int,
    class_names: Sequence[str] | None,
    class_colors: Sequence[Sequence[int]] | None,
) -> TrainingData:
    """The scenes as :class:`TrainingData`, or an :class:`InputError` naming what does not fit."""
    if not any(s.val is not None for s in scenes):
        raise InputError("training needs a held-out part: give --val-fraction > 0 or a validation pair")
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names given for {num_classes} classes")
    colors = [tuple(c) for c in class_colors] if class_colors else default_colors(num_classes, names)
    bands = {s.image.num_bands for s in scenes}
    if len(bands) != 1:
        raise InputError(f"training images have different band counts {sorted(bands)}")
    dims = {len(s.image.spatial_shape) for s in scenes}
    if len(dims) != 1:
        raise InputError("training images mix rasters (2D) and volumes (3D)")
    spatial_dims = dims.pop()
    spec = get_spec_or_fail(settings.arch)
    if spec.spatial_dims != spatial_dims:
        raise InputError(
            f"--arch {settings.arch} is a {spec.spatial_dims}D network but the training images are "
            f"{spatial_dims}D (gigaseg models lists each architecture's dimensions)"
        )
    training_band_names(scenes, settings.band_names)  # --band-names fits the images, said before training
    return TrainingData(scenes, num_classes, names, colors, bands.pop(), spatial_dims)


def training_band_names(scenes: Sequence[LabelledScene], given: Sequence[str] | None) -> list[str] | None:
    """The card's band names: ``given`` (``--band-names``), else the images' own band descriptions
    when every image has the same real ones (not GDAL's unnamed ``band_N``), else None."""
    bands = scenes[0].image.num_bands
    if given:
        if len(given) != bands:
            raise InputError(
                f"--band-names gives {len(given)} name(s) {list(given)}; the images have {bands} bands"
            )
        return list(given)
    found = {tuple(s.image.attrs.get("band_names") or ()) for s in scenes}
    names = found.pop() if len(found) == 1 else ()
    if len(names) != bands or all(re.fullmatch(r"band_\d+", n) for n in names):
        return None
    return list(names)


def normalize_training_data(data: TrainingData, option: str) -> None:
    """Set the card's normalisation for ``--normalization option`` and resolve it on each scene."""
    norm = normalization_spec(option, data.in_channels)
    if norm is None:
        mean, std = band_statistics(data.scenes)
        norm = {"kind": "meanstd", "mean": mean, "std": std}
    data.normalization = norm
    data.scene_normalizations = [
        resolve_normalization(norm, s.image.read, s.image.spatial_shape, s.image.chunk_shape[0])
        for s in data.scenes
    ]


@dataclass
class Learner:
    """The network, its optimiser and one-cycle schedule, and how a batch's loss is taken."""

    model: SegmentationModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    device: torch.device
    amp: torch.dtype | None
    aux_weights: list[float]
    se_weight: float

    @classmethod
    def build(
        cls,
        settings: TrainSettings,
        data: TrainingData,
        device: torch.device,
        log: Callable[[str], None] | None,
    ) -> Learner:
        """A fresh network (seeded), optionally from pretrained backbone weights, and its optimiser."""
        amp = autocast_dtype(device) if settings.amp else None
        torch.manual_seed(settings.seed)
        model = build(
            settings.arch, in_channels=data.in_channels, num_classes=data.num_classes, **settings.arch_config
        )
        if settings.backbone_weights is not None:
            load_pretrained_backbone(model, Path(settings.backbone_weights), log)
        model.to(device)
        aux_weights, se_weight = auxiliary_loss_weights(settings)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        total = settings.epochs * settings.steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total)
        return cls(model, opt, sched, device, amp, aux_weights, se_weight)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, loss_kind: str) -> float:
        """One optimiser step on a batch; its loss."""
        if self.device.type == "cuda":
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
        loss = batch_loss(self.model, xb, yb, loss_kind, self.aux_weights, self.se_weight, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current weights."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


class EpochLoop:
    """The epochs of one run: train, score the held-out parts, keep the best, save the state, stop early."""

    def __init__(
        self,
        settings: TrainSettings,
        data: TrainingData,
        learner: Learner,
        sampler: TileSampler,
        files: StateFiles | None,
    ) -> None:
        self.settings = settings
        self.data = data
        self.learner = learner
        self.sampler = sampler
        self.files = files
        self.progress = TrainProgress()
        self.best_weights = learner.weights()

    def resume(self, log: Callable[[str], None] | None) -> int:
        """Continue from the state files when they match this run; the epochs already done."""
        if self.files is None:
            return 0
        progress = self.files.load(self.learner.model, self.learner.optimizer, self.learner.scheduler)
        if progress is None:
            return 0
        self.progress = progress
        resumed = len(progress.history)
        if log:
            log(f"resuming after epoch {resumed} from {self.files.last}")
        saved = self.files.best_weights() if resumed else None
        self.best_weights = saved if saved is not None else self.learner.weights()
        return resumed

    def card(self) -> ModelCard:
        """The model card of the best epoch so far."""
        best, data = self.progress.best, self.data
        return ModelCard(
            arch=self.settings.arch,
            config=dict(self.learner.model.config),
            class_names=data.class_names,
            class_colors=data.class_colors,
            bands=None,
            normalization=data.normalization,
            tile_size=max(256 if data.spatial_dims == 2 else 64, self.settings.tile),
            band_names=training_band_names(data.scenes, self.settings.band_names),
            **training_resolution([s.image.attrs for s in data.scenes]),
            training={
                "settings": asdict(self.settings),
                "images": [s.name for s in data.scenes],
                "best_epoch": self.progress.best_epoch,
                "val_miou": best.miou if best else None,
            },
        )

    def _batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` normalised, augmented tiles and their labels."""
        xs, ys = [], []
        for _ in range(self.settings.batch_size):
            i, raw, valid, lab = self.sampler.draw(rng)
            x = normalize(raw, self.data.scene_normalizations[i])
            x[:, ~valid] = 0.0
            x, lab = augment(x, lab, rng, self.settings.jitter)
            xs.append(x)
            ys.append(lab)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def train_epoch(self, epoch: int) -> list[float]:
        """The epoch's optimiser steps, drawn from generators seeded by (seed, epoch); their losses."""
        rng = np.random.default_rng([self.settings.seed, epoch])
        torch.manual_seed(self.settings.seed * 100_003 + epoch)
        self.learner.model.train()
        losses = []
        for _ in range(self.settings.steps_per_epoch):
            xb, yb = self._batch(rng)
            losses.append(self.learner.step(xb, yb, self.settings.loss))
        return losses

    def run_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch, score it, keep its weights if best, and save the state."""
        started = time.perf_counter()
        losses = self.train_epoch(epoch)
        data, learner = self.data, self.learner
        cm, _ = validate_held_out(
            learner.model, data.scenes, data.scene_normalizations, data.num_classes, learner.device
        )
        result = EpochResult.score(epoch, losses, cm, started)
        if self.progress.record(result, self.settings.min_delta):
            self.best_weights = learner.weights()
            if self.files is not None:
                save_checkpoint(self.files.best, learner.model, self.card())
        if self.files is not None:
            self.files.save(learner.model, learner.optimizer, learner.scheduler, self.progress)
        return result

    def run(self, on_epoch: Callable[[EpochResult], None] | None, log: Callable[[str], None] | None) -> bool:
        """The remaining epochs, until ``patience`` of them bring no improvement; whether it stopped early."""
        settings, progress = self.settings, self.progress
        for epoch in range(len(progress.history) + 1, settings.epochs + 1):
            if progress.bad_epochs >= settings.patience:
                return True
            result = self.run_epoch(epoch)
            if log:
                log(
                    f"epoch {epoch}/{settings.epochs}: loss {result.train_loss:.3f}, held-out accuracy "
                    f"{result.accuracy:.3f}, mIoU {result.miou:.3f}, mDice {result.mdice:.3f}"
                )
            if on_epoch:
                on_epoch(result)
        return progress.bad_epochs >= settings.patience and len(progress.history) < settings.epochs


def fit(
    scenes: list[LabelledScene],
    settings: TrainSettings,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train ``settings.arch`` on ``scenes`` (validated on their held-out parts)."""
    settings.validate()
    t0 = time.perf_counter()
    data = check_training_data(scenes, settings, num_classes, class_names, class_colors)
    device = select_device(settings.device)
    sampler = TileSampler(scenes, settings.tile, num_classes, settings.balanced)
    normalize_training_data(data, settings.normalization)
    learner = Learner.build(settings, data, device, log)
    key = state_key(settings, scenes, {"classes": num_classes})
    files = StateFiles.create(state_dir, key) if state_dir is not None else None
    loop = EpochLoop(settings, data, learner, sampler, files)
    resumed = loop.resume(log)
    stopped = loop.run(on_epoch, log)

    model = learner.model
    model.load_state_dict(loop.best_weights)
    model.to("cpu").eval()
    cm, preview = validate_held_out(
        model, scenes, data.scene_normalizations, num_classes, torch.device("cpu")
    )
    return TrainOutcome(
        model,
        loop.card(),
        loop.progress.history,
        loop.progress.best_epoch,
        cm,
        stopped,
        resumed,
        preview,
        time.perf_counter() - t0,
    )
