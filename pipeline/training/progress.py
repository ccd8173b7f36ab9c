"""Training progress (history, best epoch, early-stopping count) and the state files a rerun resumes from.

After every epoch the weights, optimiser, scheduler and progress are written to
``last.pt`` (under a key of the settings and data, so a changed run starts afresh)
and the best epoch's model to ``best.safetensors``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from pipeline.stores.output import fingerprint
from pipeline.training.data import LabelledScene
from pipeline.training.settings import TrainSettings
from pipeline.training.validation import EpochResult


@dataclass
class TrainProgress:
    """The epochs so far and the early-stopping state."""

    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -np.inf
    bad_epochs: int = 0

    @property
    def best(self) -> EpochResult | None:
        """The best epoch's result (None before the first epoch)."""
        return next((h for h in self.history if h.epoch == self.best_epoch), None)

    def record(self, result: EpochResult, min_delta: float) -> bool:
        """Add an epoch; True when its held-out mIoU beats the best by more than ``min_delta``."""
        self.history.append(result)
        score = result.miou if not np.isnan(result.miou) else -np.inf
        if score > self.best_score + min_delta:
            self.best_epoch, self.best_score, self.bad_epochs = result.epoch, score, 0
            return True
        self.bad_epochs += 1
        return False


def state_key(settings: TrainSettings, scenes: Sequence[LabelledScene], extra: dict[str, Any]) -> str:
    """Fingerprint of the settings and data: saved state resumes only a run with the same key."""
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


@dataclass
class StateFiles:
    """Where a run keeps its state: ``last`` (everything, to resume) and ``best`` (the best model)."""

    last: Path
    best: Path
    key: str

    @classmethod
    def create(cls, state_dir: str | os.PathLike[str], key: str) -> StateFiles:
        """The state files under ``state_dir`` (created)."""
        folder = Path(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / "last.pt", folder / "best.safetensors", key)

    def load(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> TrainProgress | None:
        """Restore model, optimiser and scheduler from ``last`` when its key matches; its progress."""
        if not self.last.exists():
            return None
        state = torch.load(self.last, map_location="cpu", weights_only=True)
        if state.get("key") != self.key:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochResult(**h) for h in json.loads(state["history"])]
        return TrainProgress(history, state["best_epoch"], state["best_score"], state["bad_epochs"])

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The best model's weights saved by an earlier run (None when absent)."""
        return load_checkpoint(self.best)[0].state_dict() if self.best.exists() else None

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        progress: TrainProgress,
    ) -> None:
        """Write ``last`` whole (to a temporary name, then renamed)."""
        tmp = self.last.with_suffix(".tmp")
        torch.save(
            {
                "key": self.key,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": json.dumps([asdict(h) for h in progress.history]),
                "best_epoch": progress.best_epoch,
                "best_score": float(progress.best_score),
                "bad_epochs": progress.bad_epochs,
            },
            tmp,
        )
        os.replace(tmp, self.last)
