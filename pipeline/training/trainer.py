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

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import SegmentationModel, build, get_spec
from models.backbones import BackboneWeightsError, load_backbone_weights
from models.checkpoint import ModelCard, default_colors, load_checkpoint, save_checkpoint
from pipeline.engine.device import autocast_dtype, select_device
from pipeline.errors import InputError
from pipeline.evaluation.metrics import confusion, dice_per_class, iou_per_class, nanmean
from pipeline.inputs.normalization import normalize
from pipeline.inputs.scene_statistics import resolve_normalization
from pipeline.stores.output import fingerprint
from pipeline.tiling import regions
from pipeline.training.data import (
    IGNORE,
    LabelledScene,
    TileSampler,
    augment,
    band_statistics,
    region_windows,
    window_side,
)
from pipeline.training.losses import LOSSES, segmentation_loss


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


@dataclass
class TrainSettings:
    """How to train (everything here is logged as run parameters)."""

    arch: str = "unet"
    arch_config: dict[str, Any] = field(default_factory=dict)
    tile: int = 128
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 50
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "ce"
    aux_weight: float | None = None
    """One weight for every auxiliary head's loss; None: each head's weight from its paper
    (the registry's ``aux_heads``)."""
    balanced: bool = False
    jitter: float = 0.1
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    backbone_weights: str | None = None
    """Pretrained encoder weights (e.g. ImageNet) to start from, as the papers do."""
    normalization: str = "dataset"
    """Input intensities: ``dataset`` (mean/std of the training data, fixed in the card), ``zscore``
    or ``percentile`` (per scene, resolved on each scene at training and at inference: MR, EM),
    or ``window:LOW,HIGH`` (a fixed window such as a CT window in HU)."""

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad option."""
        get_spec_or_fail(self.arch)
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("tile", "batch_size", "epochs", "steps_per_epoch", "patience"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        normalization_spec(self.normalization, 1)


def normalization_spec(option: str, bands: int) -> dict[str, Any] | None:
    """The card's normalisation for a ``--normalization`` option (None: computed from the data)."""
    if option == "dataset":
        return None
    if option == "zscore":
        return {"kind": "zscore"}
    if option == "percentile":
        return {"kind": "percentile", "lower": 0.5, "upper": 99.5}
    if option.startswith("window:"):
        try:
            low, high = (float(v) for v in option.removeprefix("window:").split(","))
        except ValueError:
            low = high = float("nan")
        if low < high:
            return {"kind": "window", "low": [low] * bands, "high": [high] * bands}
    raise InputError(
        f"--normalization must be dataset, zscore, percentile or window:LOW,HIGH (LOW < HIGH), got {option!r}"
    )


def get_spec_or_fail(arch: str):  # -> ArchSpec
    """The registry entry for ``arch`` or a one-line error."""
    from models.registry import UnknownArchitectureError

    try:
        return get_spec(arch)
    except UnknownArchitectureError as exc:
        raise InputError(f"--arch {arch}: {exc}") from None


def auxiliary_loss_weights(settings: TrainSettings) -> tuple[list[float], float]:
    """Loss weights of the architecture's auxiliary heads (in output order) and of its SE loss.

    Each head's weight is its paper's (``ArchSpec.aux_heads``) unless
    ``settings.aux_weight`` overrides them all.
    """
    spec = get_spec_or_fail(settings.arch)
    heads = list(spec.aux_heads.values())
    if settings.aux_weight is not None:
        heads = [settings.aux_weight] * len(heads)
    return heads, spec.se_loss


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
class EpochResult:
    """Metrics of one epoch (training loss; held-out accuracy, IoU, Dice)."""

    epoch: int
    train_loss: float
    accuracy: float
    iou: list[float]
    dice: list[float]
    seconds: float

    @property
    def miou(self) -> float:
        """Mean IoU over classes present in the held-out part."""
        return nanmean(self.iou)

    @property
    def mdice(self) -> float:
        """Mean Dice over classes present in the held-out part."""
        return nanmean(self.dice)


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


def predict_region(
    model: SegmentationModel,
    scene: LabelledScene,
    region,
    norm: dict[str, Any],
    device: torch.device,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted classes of ``region`` (window by window), with the raw image and the labels."""
    window = window or window_side(len(region))
    shape = tuple(b - a for a, b in region)
    pred = np.full(shape, IGNORE, dtype=np.int64)
    labels = np.full_like(pred, IGNORE)
    raw_all = None
    model.eval()
    with torch.inference_mode():
        for win in region_windows(region, window):
            raw, valid, lab = scene.read(win)
            x = normalize(raw, norm)
            x[:, ~valid] = 0.0
            logits = model(torch.from_numpy(x)[None].to(device))
            logits = logits["out"] if isinstance(logits, dict) else logits
            sl = regions.within(win, region)
            pred[sl] = logits[0].argmax(0).cpu().numpy()
            labels[sl] = lab
            if raw_all is None:
                raw_all = np.zeros((raw.shape[0], *shape), dtype=np.float32)
            raw_all[(slice(None), *sl)] = raw
    pred[labels == IGNORE] = IGNORE
    return pred, labels, raw_all


def _validate(model, scenes, norms, num_classes, device) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Confusion over the held-out parts, and a 2D preview (a volume's middle slice)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    preview: dict[str, np.ndarray] = {}
    for s, norm in zip(scenes, norms):
        if s.val is None:
            continue
        pred, labels, raw = predict_region(model, s, s.val, norm, device)
        cm += confusion(pred, labels, num_classes)
        if not preview:
            middle = (pred.shape[0] // 2,) if pred.ndim == 3 else ()
            preview = {
                "image": raw[(slice(None), *middle)],
                "labels": labels[middle],
                "prediction": pred[middle],
            }
    return cm, preview


def _present(values: list[float], cm: np.ndarray) -> list[float]:
    """Per-class scores, NaN for classes absent from the reference (kept out of the means)."""
    truth = cm.sum(1)
    return [float(v) if truth[i] > 0 else float("nan") for i, v in enumerate(values)]


def _state_key(settings: TrainSettings, scenes: Sequence[LabelledScene], extra: dict[str, Any]) -> str:
    return fingerprint(
        {
            "settings": asdict(settings),
            "scenes": [
                [s.image.attrs.get("source_id"), s.labels.attrs.get("source_id"), s.train, s.val]
                for s in scenes
            ],
            **extra,
        }
    )


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
    if not any(s.val is not None for s in scenes):
        raise InputError("training needs a held-out part: give --val-fraction > 0 or a validation pair")
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names given for {num_classes} classes")
    colors = [tuple(c) for c in class_colors] if class_colors else default_colors(num_classes)
    bands = {s.image.num_bands for s in scenes}
    if len(bands) != 1:
        raise InputError(f"training images have different band counts {sorted(bands)}")
    in_channels = bands.pop()
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
    device = select_device(settings.device)
    amp = autocast_dtype(device) if settings.amp else None

    sampler = TileSampler(scenes, settings.tile, num_classes, settings.balanced)
    norm = normalization_spec(settings.normalization, in_channels)
    if norm is None:
        mean, std = band_statistics(scenes)
        norm = {"kind": "meanstd", "mean": mean, "std": std}
    norms = [
        resolve_normalization(norm, s.image.read, s.image.spatial_shape, s.image.chunk_shape[0])
        for s in scenes
    ]
    torch.manual_seed(settings.seed)
    model = build(settings.arch, in_channels=in_channels, num_classes=num_classes, **settings.arch_config)
    if settings.backbone_weights is not None:
        load_pretrained_backbone(model, Path(settings.backbone_weights), log)
    model.to(device)
    aux_weights, se_weight = auxiliary_loss_weights(settings)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.epochs * settings.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total)

    history: list[EpochResult] = []
    best_epoch, best_score, bad_epochs, start = 0, -np.inf, 0, 1
    state_path = best_path = None
    key = _state_key(settings, scenes, {"classes": num_classes})
    if state_dir is not None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        state_path, best_path = state_dir / "last.pt", state_dir / "best.safetensors"
        if state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            if state.get("key") == key:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                history = [EpochResult(**h) for h in json.loads(state["history"])]
                best_epoch, best_score, bad_epochs = (
                    state["best_epoch"],
                    state["best_score"],
                    state["bad_epochs"],
                )
                start = len(history) + 1
                if log:
                    log(f"resuming after epoch {start - 1} from {state_path}")
    resumed = start - 1

    def card_for_model() -> ModelCard:
        best = next((h for h in history if h.epoch == best_epoch), None)
        return ModelCard(
            arch=settings.arch,
            config=dict(model.config),
            class_names=names,
            class_colors=colors,
            bands=None,
            normalization=norm,
            tile_size=max(256 if spatial_dims == 2 else 64, settings.tile),
            training={
                "settings": asdict(settings),
                "images": [s.name for s in scenes],
                "best_epoch": best_epoch,
                "val_miou": best.miou if best else None,
            },
        )

    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if best_path is not None and best_path.exists() and resumed:
        best_state = load_checkpoint(best_path)[0].state_dict()
    stopped = False
    for epoch in range(start, settings.epochs + 1):
        if bad_epochs >= settings.patience:
            stopped = True
            break
        te = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch])
        torch.manual_seed(settings.seed * 100_003 + epoch)
        model.train()
        losses = []
        for _ in range(settings.steps_per_epoch):
            xs, ys = [], []
            for _ in range(settings.batch_size):
                i, raw, valid, lab = sampler.draw(rng)
                x = normalize(raw, norms[i])
                x[:, ~valid] = 0.0
                x, lab = augment(x, lab, rng, settings.jitter)
                xs.append(x)
                ys.append(lab)
            xb = torch.from_numpy(np.stack(xs))
            yb = torch.from_numpy(np.stack(ys))
            if device.type == "cuda":
                xb, yb = xb.pin_memory(), yb.pin_memory()
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = batch_loss(model, xb, yb, settings.loss, aux_weights, se_weight, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        cm, _ = _validate(model, scenes, norms, num_classes, device)
        result = EpochResult(
            epoch,
            float(np.mean(losses)),
            float(np.trace(cm) / max(cm.sum(), 1)),
            _present(iou_per_class(cm), cm),
            _present(dice_per_class(cm), cm),
            time.perf_counter() - te,
        )
        history.append(result)
        score = result.miou if not np.isnan(result.miou) else -np.inf
        if score > best_score + settings.min_delta:
            best_epoch, best_score, bad_epochs = epoch, score, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if best_path is not None:
                save_checkpoint(best_path, model, card_for_model())
        else:
            bad_epochs += 1
        if state_path is not None:
            tmp = state_path.with_suffix(".tmp")
            torch.save(
                {
                    "key": key,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": json.dumps([asdict(h) for h in history]),
                    "best_epoch": best_epoch,
                    "best_score": float(best_score),
                    "bad_epochs": bad_epochs,
                },
                tmp,
            )
            os.replace(tmp, state_path)
        if log:
            log(
                f"epoch {epoch}/{settings.epochs}: loss {result.train_loss:.3f}, held-out accuracy "
                f"{result.accuracy:.3f}, mIoU {result.miou:.3f}, mDice {result.mdice:.3f}"
            )
        if on_epoch:
            on_epoch(result)
    else:
        stopped = bad_epochs >= settings.patience and len(history) < settings.epochs

    model.load_state_dict(best_state)
    model.to("cpu").eval()
    cm, preview = _validate(model, scenes, norms, num_classes, torch.device("cpu"))
    return TrainOutcome(
        model,
        card_for_model(),
        history,
        best_epoch,
        cm,
        stopped,
        resumed,
        preview,
        time.perf_counter() - t0,
    )
