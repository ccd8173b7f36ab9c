"""The rows that get the scene as an array read before their clock: gigaseg's engine, the untiled
references and the peers (MONAI, nnU-Net, chips, naive tiles).

Their seconds run from the array in memory to labels: normalising the scene, tiling,
predicting, blending. Probabilities for the seam error are saved after the clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.peers.chips import Predict, chips_average, chips_crop, labels_of, naive_tiles
from bench.peers.fixtures import read_scene
from bench.peers.monai_window import monai_probabilities
from bench.peers.nnunet import nnunet_probabilities
from bench.peers.probes import GpuSampler, peak_rss
from bench.peers.rows import RowSpec, Tiling
from models.checkpoint import ModelCard, load_checkpoint
from pipeline.inputs.normalization import normalize

if TYPE_CHECKING:
    from pipeline.engine.in_memory import ArrayResult

CHANNELS_LAST_BY_HAND = ("reference-cl", "monai-gaussian-cl")
"""Rows whose model and tiles the bench itself puts channels-last (the engine does it on its own)."""


@dataclass
class ArrayRun:
    """What an in-memory row works with: the raw scene, the model and how to tile."""

    raw: np.ndarray
    model: torch.nn.Module
    card: ModelCard
    predict: Predict
    device: torch.device
    tiling: Tiling
    amp: bool
    x: torch.Tensor | None = None
    """The normalised scene, made on the clock by the first peer that asks (see :meth:`normalized`)."""

    def normalized(self) -> torch.Tensor:
        """The whole scene normalised in memory, as the references and the peers do it (on their clock)."""
        if self.x is None:
            self.x = torch.from_numpy(normalize(self.raw, self.card.normalization))
        return self.x

    def segment_array(self, blend: str, **options: Any) -> ArrayResult:
        """gigaseg's engine on the raw array (it normalises block by block)."""
        from pipeline.engine.in_memory import segment_array

        norm = partial(normalize, spec=self.card.normalization)
        t = self.tiling
        return segment_array(
            self.raw, self.model, t.tile, t.overlap, blend, normalizer=norm, batch_size=t.batch,
            device=self.device, **options,
        )  # fmt: skip


@dataclass
class Prediction:
    """A row's output: labels, and the probabilities when it made them on the clock."""

    labels: torch.Tensor
    probs: torch.Tensor | None = None


def predictor(
    model: torch.nn.Module, device: torch.device, amp: bool, channels_last: bool = False
) -> Predict:
    """Batch of tiles → softmax probabilities; ``channels_last``: the batch is laid out NHWC first.

    With ``channels_last`` the caller has put the model's weights channels-last
    (``model.to(memory_format=torch.channels_last)``): what a MONAI user would write by hand.
    """
    from pipeline.engine.device import autocast_dtype

    dtype = autocast_dtype(device) if amp else None

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            tiles = tiles.to(device, non_blocking=True)
            if channels_last:
                tiles = tiles.contiguous(memory_format=torch.channels_last)
            return torch.softmax(model(tiles).float(), dim=1)

    return predict


def _from_probabilities(
    probabilities: Callable[[ArrayRun], torch.Tensor],
) -> Callable[[ArrayRun], Prediction]:
    """A row that makes probabilities: its labels are their argmax, on the clock."""

    def run(array: ArrayRun) -> Prediction:
        probs = probabilities(array)
        return Prediction(labels_of(probs), probs)

    return run


def _untiled(run: ArrayRun) -> torch.Tensor:
    return run.predict(run.normalized()[None])[0].cpu()


def _monai(mode: str) -> Callable[[ArrayRun], torch.Tensor]:
    return lambda run: monai_probabilities(run.normalized(), run.predict, run.tiling, mode, run.device)


def _nnunet(run: ArrayRun) -> torch.Tensor:
    t = run.tiling
    return nnunet_probabilities(
        run.normalized(), run.model, t.tile, t.overlap, run.card.num_classes, run.device
    )


def _chips(chips: Callable[..., torch.Tensor]) -> Callable[[ArrayRun], torch.Tensor]:
    def probabilities(run: ArrayRun) -> torch.Tensor:
        t = run.tiling
        return chips(run.normalized(), run.predict, t.tile, t.stride, t.batch, run.card.num_classes)

    return probabilities


def _naive(run: ArrayRun, keep_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    t = run.tiling
    return naive_tiles(run.normalized(), run.predict, t.tile, t.batch, run.card.num_classes, keep_probs)


def _engine_labels(blend: str) -> Callable[[ArrayRun], Prediction]:
    return lambda run: Prediction(torch.from_numpy(run.segment_array(blend, amp=run.amp).labels))


def _engine_probabilities(blend: str) -> Callable[[ArrayRun], torch.Tensor]:
    return lambda run: torch.from_numpy(run.segment_array(blend, with_probabilities=True).probabilities)


ON_CLOCK: dict[str, Callable[[ArrayRun], Prediction]] = {
    "reference": _from_probabilities(_untiled),
    "reference-cl": _from_probabilities(_untiled),
    "gigaseg-array": _engine_labels("gaussian"),
    "gigaseg-array-crop": _engine_labels("crop"),
    "monai-constant": _from_probabilities(_monai("constant")),
    "monai-gaussian": _from_probabilities(_monai("gaussian")),
    "monai-gaussian-cl": _from_probabilities(_monai("gaussian")),
    "nnunet": _from_probabilities(_nnunet),
    "chips-average": _from_probabilities(_chips(chips_average)),
    "chips-crop": _from_probabilities(_chips(chips_crop)),
    "naive": lambda run: Prediction(_naive(run, keep_probs=False)[0]),
}
"""What each in-memory row does on its clock."""
AFTER_CLOCK: dict[str, Callable[[ArrayRun], torch.Tensor]] = {
    "gigaseg-array": _engine_probabilities("gaussian"),
    "gigaseg-array-crop": _engine_probabilities("crop"),
    "naive": lambda run: _naive(run, keep_probs=True)[1],
}
"""Rows that keep no probabilities on their clock: a second pass makes them for the seam error."""


def _load(spec: RowSpec) -> tuple[ArrayRun, float]:
    """The model on its device and the scene read (the read timed apart): what comes before the clock."""
    device = torch.device(spec.device)
    model, card = load_checkpoint(spec.ckpt)
    model = model.to(device).eval()
    channels_last = spec.row in CHANNELS_LAST_BY_HAND
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    raw = read_scene(spec.scene)
    read_seconds = time.perf_counter() - t0
    predict = predictor(model, device, spec.amp, channels_last)
    return ArrayRun(raw, model, card, predict, device, spec.tiling, spec.amp), read_seconds


def run_in_memory(spec: RowSpec) -> dict[str, Any]:
    """Run one in-memory row; returns its seconds, read seconds, peak RSS and GPU share."""
    on_clock = ON_CLOCK.get(spec.row)
    run, read_seconds = _load(spec)
    if on_clock is None:
        raise ValueError(f"unknown row {spec.row!r}")
    result: dict[str, Any] = {"row": spec.row, "read_seconds": read_seconds}
    with GpuSampler(spec.device) as gpu:
        t0 = time.perf_counter()
        prediction = on_clock(run)
        result["seconds"] = time.perf_counter() - t0
    result["rss"] = peak_rss()
    result["gpu_busy"] = gpu.busy
    if spec.seam:  # after the clock and the RSS reading: outputs for the seam error
        probs = AFTER_CLOCK[spec.row](run) if spec.row in AFTER_CLOCK else prediction.probs
        out = Path(spec.out)
        np.save(out / "labels.npy", prediction.labels.numpy())
        np.save(out / "probs.npy", probs.numpy())
    return result
