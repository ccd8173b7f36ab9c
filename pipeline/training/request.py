"""One ``gigaseg train``: the labelled images, the held-out part, how to train, where the model goes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import InputError
from pipeline.inputs.tiff_stack import parse_spacing
from pipeline.training.settings import TrainSettings


@dataclass
class TrainRequest:
    """The options of a training run (the arguments of the ``train-model`` flow)."""

    images: Sequence[str]
    labels: Sequence[str]
    model_name: str
    settings: TrainSettings
    val_fraction: float = 0.2
    val_image: str | None = None
    val_labels: str | None = None
    class_names: Sequence[str] | None = None
    class_colors: Sequence[Sequence[int]] | None = None
    work_dir: str | Path | None = None
    output: str | Path | None = None
    register: bool = True
    spacing: str | Sequence[float] | None = None
    """Voxel size (Z,Y,X mm) when the images are TIFF stacks read as volumes."""

    @property
    def work(self) -> Path:
        """The work folder: scene stores, resumable state, the MLflow run being written."""
        return Path(self.work_dir) if self.work_dir else Path(".gigaseg") / "train" / self.model_name

    @property
    def state_dir(self) -> Path:
        """Where the trainer keeps its resumable state."""
        return self.work / "state"

    @property
    def held_out_fraction(self) -> float:
        """Share of each pair held out for validation (none when a validation pair is given)."""
        return 0.0 if self.val_image else self.val_fraction

    def checked(self) -> TrainRequest:
        """Raise :class:`InputError` naming the first bad option; the request with its spacing parsed."""
        if len(self.images) != len(self.labels):
            images, labels = len(self.images), len(self.labels)
            raise InputError(f"{images} image(s) but {labels} label raster(s): give one label per image")
        if (self.val_image is None) != (self.val_labels is None):
            raise InputError("--val-image and --val-labels go together")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        self.settings.validate()
        return replace(self, spacing=parse_spacing(self.spacing))
