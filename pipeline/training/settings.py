"""How to train: the options of ``gigaseg train`` as one dataclass, checked at the door."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import ArchSpec, UnknownArchitectureError, get_spec
from pipeline.errors import InputError
from pipeline.inputs.normalization import normalization_spec
from pipeline.training.losses import LOSSES


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
    band_names: list[str] | None = None
    """Names of the image's bands, in order, for the card (``red``, ``nir``, …: what picks a STAC
    item's assets and matches named raster bands); None: the images' own band descriptions."""

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


def get_spec_or_fail(arch: str) -> ArchSpec:
    """The registry entry for ``arch`` or a one-line error."""
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
