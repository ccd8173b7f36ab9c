"""gigaseg against the tiled-inference tools users would pick instead (issue 9), side by side.

For the same weights, the same single-band scene and the same tile / overlap /
batch, each row runs in a fresh child process (so its peak RSS is its own, whole
process, imports included):

- ``gigaseg``: end to end, GeoTIFF → scene store → blocks → COG, in process
  (``pipeline.job.steps.segment``, the library call under ``gigaseg segment --workers 0
  --no-track``: no Ray, no MLflow, no Prefect start-up);
- ``gigaseg-cli``: the same through the ``gigaseg segment --workers 0 --no-track``
  command (Prefect flow included), at the sizes given by ``--cli-sizes``;
- ``gigaseg-ray``: the ``gigaseg`` row with 2 workers on a fresh local Ray cluster
  (start-up counted; RSS summed over the driver and the cluster's processes), at
  the sizes given by ``--ray-sizes``;
- ``gigaseg-array``: the engine on the image already in memory
  (:func:`pipeline.engine.in_memory.segment_array`, blockwise);
- ``gigaseg-array-crop``: the same with crop blending (``--blend crop``: each tile
  keeps its centre), the engine's counterpart of ``chips-crop``;
- ``monai-constant`` / ``monai-gaussian``: MONAI ``sliding_window_inference``;
- ``monai-gaussian-cl``: the gaussian row with the model and tiles channels-last by
  hand, as gigaseg runs them (U-Net only by default: a 1×1 conv does not care), so
  the layout's share of gigaseg's lead is visible;
- ``nnunet``: nnU-Net v2's ``nnUNetPredictor.predict_sliding_window_return_logits``
  (gaussian weights, no mirroring, one tile per forward as nnU-Net does, logits
  blended in float16), then nnU-Net's own softmax; runs where ``make peer-tools``
  installed nnU-Net into ``.venv/nnunet`` (else the table says it was not run);
- ``chips-average``: TorchGeo / Raster Vision-style chip prediction (whole scene in
  memory, chips at the same stride, last chip flush with the edge, plain averaging);
- ``chips-crop``: the same chips, each keeping its centre: half the overlap cropped
  off every side that is not the scene's edge, later chips written over earlier
  ones (Raster Vision's ``crop_sz``);
- ``naive``: non-overlapping tiles.

Peers get the image as an array read before their clock starts (their "seconds"
is in-memory time: normalise → tiles → labels; the read is shown apart); gigaseg's
end-to-end rows pay for reading and writing files. Seam error compares each row's
probabilities with one untiled forward pass of the same fully convolutional model
over the whole scene, where that fits (``--ref-max-mpx``): ``reference-cl``
(channels-last, like the engine) for the gigaseg rows, ``reference`` (the model's
own layout) for the peers. A row that passes the memory cap or the time limit is
killed and the table says so. ``--repeat N`` runs every row N times, interleaved
per scene, and keeps the fastest (up to ``--repeat-max-mpx``).

Run: ``python -m bench.peer_bench [--quick] [--sizes 4,16,64,256,1024] [--repeat 2]``;
results go to the "Peer tools" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "gigaseg",
    "gigaseg-cli",
    "gigaseg-ray",
    "gigaseg-array",
    "gigaseg-array-crop",
    "monai-constant",
    "monai-gaussian",
    "monai-gaussian-cl",
    "nnunet",
    "chips-average",
    "chips-crop",
    "naive",
)
REFERENCES = ("reference", "reference-cl")
"""Untiled passes over the whole scene: the model in its own layout, and channels-last."""
CHANNELS_LAST_ROWS = ("gigaseg", "gigaseg-cli", "gigaseg-ray", "gigaseg-array", "gigaseg-array-crop")
"""Rows whose model runs channels-last (the engine's default): seam error against ``reference-cl``."""
RAY_WORKERS = 2
NNUNET_PATH = ROOT / ".venv" / "nnunet"
"""Where ``make peer-tools`` installs nnU-Net v2 and the few packages its predictor imports.

A folder of its own, put on ``sys.path`` by the ``nnunet`` row only: nnU-Net's full
dependency tree pulls torchvision and timm, which do not import with this machine's
torch, and its predictor needs neither.
"""
ROW_TEXT = {
    "reference": "untiled pass over the whole scene (reference)",
    "reference-cl": "untiled pass, channels-last (reference-cl; Δp: vs the reference)",
    "gigaseg": "gigaseg end to end (GeoTIFF → COG, in process, untracked)",
    "gigaseg-cli": "`gigaseg segment --workers 0 --no-track` (whole command, Prefect flow)",
    "gigaseg-ray": f"gigaseg end to end on a local Ray cluster, {RAY_WORKERS} workers (RSS summed)",
    "gigaseg-array": "gigaseg engine on an in-memory array (`segment_array`)",
    "gigaseg-array-crop": "gigaseg engine on an in-memory array, crop blending (`--blend crop`)",
    "monai-constant": "MONAI `sliding_window_inference`, constant",
    "monai-gaussian": "MONAI `sliding_window_inference`, gaussian",
    "monai-gaussian-cl": "MONAI `sliding_window_inference`, gaussian, model channels-last by hand",
    "nnunet": "nnU-Net v2 `nnUNetPredictor` sliding window (gaussian, no mirroring; its batch of 1)",
    "chips-average": "chip prediction, plain averaging (TorchGeo / Raster Vision style)",
    "chips-crop": "chip prediction, edge cropping (Raster Vision `crop_sz` style)",
    "naive": "non-overlapping tiles",
}
NORMALIZATION = {"kind": "meanstd", "mean": [127.5], "std": [64.0]}
BAND = 8
"""Half-width (px) of the tile-border band where label disagreement is counted."""
FRAME = 64
"""Frame (px) at the scene's edge left out of the seam figures (see :func:`seam_error`)."""


@dataclass
class Case:
    """One model: how it is built and how it is tiled."""

    name: str
    arch: str
    config: dict[str, Any]
    classes: int
    tile: int
    batch: int
    sizes: list[int] = field(default_factory=list)
    """Scene sides (px)."""
    skip_by_default: tuple[str, ...] = ()
    """Rows left out unless ``--rows`` names them (e.g. a channels-last row where the layout is moot)."""


# ------------------------------------------------------------------------- child side


def _maxrss() -> int:
    """Peak RSS of this process since it started (bytes): ``VmHWM`` of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``exec``, so a child
    started by a parent holding 800 MiB would report at least 800 MiB whatever it used.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no procfs


def _read_scene(path: str) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


class _GpuSampler:
    """Fraction of wall time the GPU is busy (``nvidia-smi`` utilisation, sampled); None off CUDA."""

    def __init__(self, device: str):
        self.samples: list[float] = []
        self.on = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]) / 100.0)

    def __enter__(self) -> _GpuSampler:
        if self.on:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


class _TreeRss:
    """Peak of the RSS summed over this process and all its descendants, sampled every 0.1 s.

    For the Ray row, whose work runs in the cluster's processes (raylet, GCS, workers),
    not in this one. Shared pages (libraries, Ray's object store) count once per
    process, so the sum is an upper bound.
    """

    def __init__(self, on: bool = True) -> None:
        import psutil

        self.on = on
        self.peak = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # exited between the listing and the reading
                total += proc.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def __enter__(self) -> _TreeRss:
        if self.on:
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self._stop.set()
            self._thread.join()
            self.sample()


def _predictor(model, device, amp: bool, channels_last: bool = False):
    """Batch of tiles → softmax probabilities; ``channels_last``: the batch is laid out NHWC first.

    With ``channels_last`` the caller has put the model's weights channels-last
    (``model.to(memory_format=torch.channels_last)``): what a MONAI user would write by hand.
    """
    import torch

    from pipeline.engine.device import autocast_dtype

    dtype = autocast_dtype(device) if amp else None

    def predict(tiles):
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            tiles = tiles.to(device, non_blocking=True)
            if channels_last:
                tiles = tiles.contiguous(memory_format=torch.channels_last)
            return torch.softmax(model(tiles).float(), dim=1)

    return predict


def _labels(probs):
    """Labels from ``(K, *spatial)`` probabilities (max over the class axis: argmax, but fast on CPU)."""
    import torch

    return torch.max(probs, dim=0)[1].to(torch.uint8)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Chip origins along one axis: every ``stride``, the last one flush with the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _chips_average(x, predict, tile: int, stride: int, batch: int, classes: int):
    import torch

    _, h, w = x.shape
    acc = torch.zeros((classes, h, w), dtype=torch.float32)
    count = torch.zeros((h, w), dtype=torch.float32)
    origins = [(r, c) for r in _starts(h, tile, stride) for c in _starts(w, tile, stride)]
    for i in range(0, len(origins), batch):
        part = origins[i : i + batch]
        t = torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])
        p = predict(t).cpu()
        for (r, c), q in zip(part, p):
            acc[:, r : r + q.shape[1], c : c + q.shape[2]] += q
            count[r : r + q.shape[1], c : c + q.shape[2]] += 1
    acc /= count
    return acc


def _chips_crop(x, predict, tile: int, stride: int, batch: int, classes: int):
    """Chips at ``stride``, each keeping its centre (Raster Vision's ``crop_sz``).

    ``(tile - stride) // 2`` px are cropped off every side of a chip that is not on
    the scene's edge; a later chip overwrites what an earlier one wrote. No blending.
    """
    import torch

    _, h, w = x.shape
    crop = (tile - stride) // 2
    out = torch.empty((classes, h, w), dtype=torch.float32)
    origins = [(r, c) for r in _starts(h, tile, stride) for c in _starts(w, tile, stride)]

    def kept(start: int, size: int) -> tuple[int, int]:
        return (0 if start == 0 else crop), (tile if start + tile >= size else tile - crop)

    for i in range(0, len(origins), batch):
        part = origins[i : i + batch]
        t = torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])
        for (r, c), q in zip(part, predict(t).cpu()):
            (r0, r1), (c0, c1) = kept(r, h), kept(c, w)
            out[:, r + r0 : r + r1, c + c0 : c + c1] = q[:, r0:r1, c0:c1]
    return out


def _nnunet(x, model, tile: int, overlap: float, classes: int, device):
    """nnU-Net v2's sliding window over ``x`` (C, H, W) → softmax probabilities (K, H, W).

    The predictor gets what ``manual_initialization`` would give it from a trained
    model folder, as far as the sliding window reads it: the network, the patch
    size (a 2D configuration over a one-slice stack, as nnU-Net runs 2D models), a
    label manager for ``classes`` labels, and no mirroring. nnU-Net forwards one tile
    at a time and blends logits in float16; its label manager's softmax follows.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    with contextlib.redirect_stdout(sys.stderr):  # it prints about CPU devices
        predictor = nnUNetPredictor(
            tile_step_size=1 - overlap, use_gaussian=True, use_mirroring=False,
            perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False,
        )  # fmt: skip
    predictor.network = model
    predictor.configuration_manager = ConfigurationManager({"patch_size": [tile, tile], "architecture": {}})
    labels = {"background": 0, **{f"class {k}": k for k in range(1, classes)}}
    predictor.label_manager = LabelManager(labels, regions_class_order=None)
    predictor.allowed_mirroring_axes = None
    logits = predictor.predict_sliding_window_return_logits(x[:, None])
    return predictor.label_manager.apply_inference_nonlin(logits[:, 0]).cpu()


def _naive(x, predict, tile: int, batch: int, classes: int, keep_probs: bool):
    import torch

    _, h, w = x.shape
    labels = torch.empty((h, w), dtype=torch.uint8)
    probs = torch.empty((classes, h, w), dtype=torch.float32) if keep_probs else None
    full = [(r, c) for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)]
    edge = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile) if r + tile > h or c + tile > w]

    def put(r, c, q):
        labels[r : r + q.shape[1], c : c + q.shape[2]] = _labels(q)
        if probs is not None:
            probs[:, r : r + q.shape[1], c : c + q.shape[2]] = q

    for i in range(0, len(full), batch):
        part = full[i : i + batch]
        for (r, c), q in zip(
            part, predict(torch.stack([x[:, r : r + tile, c : c + tile] for r, c in part])).cpu()
        ):
            put(r, c, q)
    for r, c in edge:
        put(r, c, predict(x[None, :, r : r + tile, c : c + tile])[0].cpu())
    return labels, probs


def _start_ray():
    """A fresh local Ray cluster (what ``segment`` starts when none runs) and a block runner on it.

    ``address="local"`` always starts a new cluster, with ``connect``'s options: it
    never joins one another user left running on this machine, so the cluster's
    processes are this row's descendants and its summed RSS is the row's alone.
    Returns the runner and the start-up seconds.
    """
    import logging

    import ray

    from pipeline.execution.ray_pool import RayBlockRunner

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return RayBlockRunner(workers=RAY_WORKERS), time.perf_counter() - t0


_ROW_IMPORTS = {
    "gigaseg": ("pipeline.job.steps", "pipeline.job.config"),
    "gigaseg-cli": ("flows.cli", "flows.segment_scene"),
    "gigaseg-ray": ("pipeline.job.steps", "pipeline.job.config", "pipeline.execution.ray_pool"),
    "gigaseg-array": ("pipeline.engine.in_memory",),
    "gigaseg-array-crop": ("pipeline.engine.in_memory",),
    "monai-constant": ("monai.inferers",),
    "monai-gaussian": ("monai.inferers",),
    "monai-gaussian-cl": ("monai.inferers",),
    "nnunet": ("nnunetv2.inference.predict_from_raw_data",),
}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one row; returns seconds, peak RSS and where its outputs went."""
    import torch

    from models.checkpoint import load_checkpoint
    from pipeline.inputs.normalization import normalize

    row, out = spec["row"], Path(spec["out"])
    if row == "nnunet":
        sys.path.append(str(NNUNET_PATH))
    # Imports happen before any clock starts, for every row alike.
    import importlib

    for module in _ROW_IMPORTS.get(row, ()):
        importlib.import_module(module)
    device = torch.device(spec["device"])
    tile, overlap, batch = spec["tile"], spec["overlap"], spec["batch"]
    stride = tile - round(tile * overlap)
    result: dict[str, Any] = {"row": row}
    seam = spec["seam"]

    if row in ("gigaseg", "gigaseg-cli", "gigaseg-ray"):
        from pipeline.execution.process_memory import bound_process_memory

        bound_process_memory()  # as the gigaseg command does at start
        cog = out / "labels.tif"
        args = dict(
            tile=tile, overlap=overlap, blend="gaussian", batch_size=batch, quiet=True, amp=spec["amp"]
        )
        with _GpuSampler(spec["device"]) as gpu, _TreeRss(on=row == "gigaseg-ray") as tree:
            t0 = time.perf_counter()
            if row in ("gigaseg", "gigaseg-ray"):
                from pipeline.job.config import SegmentConfig
                from pipeline.job.steps import segment

                stages: dict[str, float] = {}
                runner = None
                if row == "gigaseg-ray":
                    runner, stages["ray_start"] = _start_ray()
                summary = segment(
                    SegmentConfig(
                        input=Path(spec["scene"]),
                        model=spec["ckpt"],
                        output=cog,
                        workers=RAY_WORKERS if row == "gigaseg-ray" else 0,
                        device=spec["device"],
                        work_dir=out / "work",
                        channels_last=True,
                        **args,
                    ),
                    run_blocks=runner,
                )
                stages.update(summary.timings)
                result["stages"] = {k: round(v, 2) for k, v in stages.items() if k != "tiles"}
            else:
                from flows.cli import main as cli

                argv = ["segment", spec["scene"], "-m", spec["ckpt"], "-o", str(cog), "--workers", "0"]
                argv += ["--no-track", "--quiet", "--tile", str(tile), "--overlap", str(overlap)]
                argv += ["--batch-size", str(batch), "--device", spec["device"]] + (
                    ["--amp"] if spec["amp"] else []
                )
                if cli(argv) != 0:
                    raise RuntimeError("gigaseg segment failed")
            result["seconds"] = time.perf_counter() - t0
        # The Ray row's work runs in the cluster's processes: the summed tree's peak.
        result["rss"] = max(tree.peak, _maxrss()) if row == "gigaseg-ray" else _maxrss()
        result["gpu_busy"] = gpu.busy
        if row == "gigaseg-ray":  # after the clock: the cluster's processes go with it
            import ray

            ray.shutdown()
        if seam:
            import rasterio

            with rasterio.open(cog) as src:
                np.save(out / "labels.npy", src.read(1))
        return result

    model, card = load_checkpoint(spec["ckpt"])
    model = model.to(device).eval()
    channels_last = row in ("reference-cl", "monai-gaussian-cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    raw = _read_scene(spec["scene"])
    result["read_seconds"] = time.perf_counter() - t0
    predict = _predictor(model, device, spec["amp"], channels_last)
    classes = card.num_classes
    probs = None
    with _GpuSampler(spec["device"]) as gpu:
        t0 = time.perf_counter()
        if row.startswith("gigaseg-array"):
            from functools import partial

            from pipeline.engine.in_memory import segment_array

            norm = partial(normalize, spec=card.normalization)
            blend = "crop" if row.endswith("-crop") else "gaussian"
            res = segment_array(raw, model, tile, overlap, blend, normalizer=norm, batch_size=batch,
                                device=device, amp=spec["amp"])  # fmt: skip
            labels = torch.from_numpy(res.labels)
        else:  # the references and the peers normalise the whole scene in memory, on the clock
            x = torch.from_numpy(normalize(raw, card.normalization))
            if row in REFERENCES:
                probs = predict(x[None])[0].cpu()
            elif row.startswith("monai-"):
                from monai.inferers import sliding_window_inference

                with torch.inference_mode():
                    probs = sliding_window_inference(
                        x[None], (tile, tile), batch, predict, overlap=overlap, mode=row.split("-")[1],
                        sigma_scale=0.125, padding_mode="reflect", sw_device=device,
                        device=torch.device("cpu"),
                    )[0]  # fmt: skip
                probs = torch.as_tensor(probs)
            elif row == "nnunet":
                probs = _nnunet(x, model, tile, overlap, classes, device)
            elif row == "chips-average":
                probs = _chips_average(x, predict, tile, stride, batch, classes)
            elif row == "chips-crop":
                probs = _chips_crop(x, predict, tile, stride, batch, classes)
            elif row == "naive":
                labels, _ = _naive(x, predict, tile, batch, classes, keep_probs=False)
            else:
                raise ValueError(f"unknown row {row!r}")
            if probs is not None:
                labels = _labels(probs)
        result["seconds"] = time.perf_counter() - t0
    result["rss"] = _maxrss()
    result["gpu_busy"] = gpu.busy
    if seam:  # after the clock and the RSS reading: outputs for the seam error
        if row.startswith("gigaseg-array"):
            res = segment_array(raw, model, tile, overlap, blend, normalizer=norm, batch_size=batch,
                                device=device, with_probabilities=True)  # fmt: skip
            probs = torch.from_numpy(res.probabilities)
        elif row == "naive":
            _, probs = _naive(x, predict, tile, batch, classes, keep_probs=True)
        np.save(out / "labels.npy", labels.numpy())
        np.save(out / "probs.npy", probs.numpy())
    return result


# ------------------------------------------------------------------------ parent side


def write_scene(path: Path, side: int) -> Path:
    """A single-band uint8 scene with texture at several scales, written strip by strip."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint8",
        "crs": CRS.from_epsg(32633), "transform": Affine(0.5, 0, 500000, 0, -0.5, 5000000),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1,
        "num_threads": "all_cpus", "bigtiff": "IF_SAFER",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    step, coarse = 2048, 64
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, step):
            h = min(step, side - r)
            big = rng.random((h // coarse + 1, side // coarse + 1), dtype=np.float32)
            smooth = np.repeat(np.repeat(big, coarse, 0), coarse, 1)[:h, :side]
            fine = rng.random((h, side), dtype=np.float32)
            strip = (200 * smooth + 55 * fine).astype(np.uint8)
            dst.write(strip, 1, window=rasterio.windows.Window(0, r, side, h))
    return path


def make_checkpoint(case: Case, path: Path) -> Path:
    """The case's model with seeded random weights, saved once: every row loads these."""
    import torch

    from models import build
    from models.checkpoint import card_for, save_checkpoint

    torch.manual_seed(0)
    model = build(case.arch, in_channels=1, num_classes=case.classes, **case.config)
    return save_checkpoint(path, model, card_for(model, tile_size=case.tile, normalization=NORMALIZATION))


@dataclass
class RowResult:
    status: str  # "ok", or why not
    seconds: float = math.nan
    rss: float = math.nan
    read_seconds: float | None = None
    gpu_busy: float | None = None
    stages: dict[str, float] | None = None
    out: Path | None = None
    runs: list[float] = field(default_factory=list)
    """Seconds of every run that finished (repeats); ``seconds`` is their minimum."""
    failed_runs: list[str] = field(default_factory=list)
    """Why the repeats that did not finish stopped."""


def merge_runs(results: list[RowResult]) -> RowResult:
    """One row's repeats as one result: the fastest run's seconds (and stages), the largest peak RSS.

    A row is ok when any run finished; the others' failures stay listed. No run
    finished: the first failure.
    """
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return results[0]
    best = min(ok, key=lambda r: r.seconds)
    return RowResult(
        "ok",
        best.seconds,
        max(r.rss for r in ok),
        best.read_seconds,
        best.gpu_busy,
        best.stages,
        ok[0].out,
        [r.seconds for r in ok],
        [r.status for r in results if r.status != "ok"],
    )


def run_row(spec: dict[str, Any], timeout: float, cap_bytes: int) -> RowResult:
    """Run one row in a fresh process, killing it past ``timeout`` or ``cap_bytes`` of RSS.

    The cap applies to the RSS summed over the child and all its descendants (Ray's
    raylet, GCS and workers for the Ray row), sampled every 0.1 s.
    """
    import psutil

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.peer_bench", "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    t0, peak, why = time.perf_counter(), 0, None
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if peak > cap_bytes:
            cap = cap_bytes / 2**30
            why = f"out of memory (passed the {cap:.0f} GiB cap after {time.perf_counter() - t0:.0f} s)"
        elif time.perf_counter() - t0 > timeout:
            why = f"timed out (> {timeout:.0f} s)"
        if why:
            for child in ps.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            return RowResult(why, rss=peak)
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    found = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        if "MemoryError" in stderr or proc.returncode in (-9, 137):
            return RowResult(f"out of memory ({last[:80]})", rss=peak)
        return RowResult(f"failed: {last[:120]}", rss=peak)
    r = json.loads(found[-1][len("RESULT ") :])
    return RowResult(
        "ok", r["seconds"], r["rss"], r.get("read_seconds"), r.get("gpu_busy"), r.get("stages"), out,
        [r["seconds"]],
    )  # fmt: skip


def _reference_for(row: str, refs: dict[str, RowResult]) -> RowResult | None:
    """The finished reference a row's seam error is measured against (channels-last rows: reference-cl)."""
    ref = refs.get("reference-cl" if row.split(" ")[0] in CHANNELS_LAST_ROWS else "reference")
    return ref if ref is not None and ref.status == "ok" else None


def _border_band(shape: tuple[int, int], tile: int, stride: int) -> np.ndarray:
    """Pixels within ``BAND`` px of a tile edge of the overlapping grid or of the non-overlapping one."""
    masks = []
    for size in shape:
        edges = np.unique(
            np.concatenate(
                [np.arange(0, size, stride), np.arange(tile, size, stride), np.arange(0, size, tile)]
            )
        )
        edges = edges[(edges > 0) & (edges < size)]
        pos = np.arange(size)
        near = np.zeros(size, bool)
        for e in edges:
            near[max(0, e - BAND) : e + BAND] = True
        masks.append(near)
        del pos
    return masks[0][:, None] | masks[1][None, :]


def seam_error(row_out: Path, ref_out: Path, band: np.ndarray) -> dict[str, float]:
    """|Δp| against the untiled pass (mean, p99) and label disagreement in the border band (%).

    Seams are inside the scene: the mean / p99 / band figures leave out a ``FRAME``-px
    frame at the scene's edge, where the difference comes from how each tool pads
    the scene's outside (the untiled pass zero-pads; gigaseg reflects, MONAI and the
    chips put a window flush with the edge), not from tiling. ``mean_all`` keeps it.
    """
    out: dict[str, float] = {}
    inner = (slice(FRAME, -FRAME), slice(FRAME, -FRAME))
    ref_l = np.load(ref_out / "labels.npy", mmap_mode="r")[inner]
    lab = np.load(row_out / "labels.npy", mmap_mode="r")[inner]
    b = band[inner]
    out["band_disagree"] = float(100 * (np.asarray(lab)[b] != np.asarray(ref_l)[b]).mean())
    if (row_out / "probs.npy").exists():
        ref_p = np.load(ref_out / "probs.npy", mmap_mode="r")
        p = np.load(row_out / "probs.npy", mmap_mode="r")
        diff = np.abs(np.asarray(p, np.float32) - np.asarray(ref_p, np.float32))
        out["mean_all"] = float(diff.mean())
        diff = diff[(slice(None), *inner)].ravel()
        out["mean"] = float(diff.mean())
        out["p99"] = float(np.quantile(diff, 0.99))
    return out


def _fmt_err(e: dict[str, float] | None) -> tuple[str, str, str, str]:
    if e is None:
        return "–", "–", "–", "–"
    if "mean" not in e:
        return "(as the array row)", "", f"{e['band_disagree']:.3f}", ""
    return f"{e['mean']:.2e}", f"{e['p99']:.2e}", f"{e['band_disagree']:.3f}", f"{e['mean_all']:.2e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="4 and 16 Mpx 1×1 conv, 1 Mpx U-Net: a few minutes")
    p.add_argument("--sizes", default="4,16,64,256,1024", help="1×1-conv scene sizes in Mpx (comma list)")
    p.add_argument("--unet-sizes", default="4,16", help="U-Net scene sizes in Mpx (comma list; empty: none)")
    p.add_argument("--cli-sizes", default="64", help="sizes (Mpx) that also get the gigaseg-cli row")
    p.add_argument(
        "--ray-sizes",
        default="16",
        help=f"sizes (Mpx) that also get the gigaseg-ray row ({RAY_WORKERS} workers)",
    )
    p.add_argument(
        "--rows",
        default=None,
        help="rows to run, for every case (default: all, less monai-gaussian-cl on the 1×1 conv, "
        "where the layout is moot)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each row, interleaved per scene; the table shows the fastest",
    )
    p.add_argument(
        "--repeat-max-mpx", type=float, default=100, help="largest scene whose rows are repeated (else once)"
    )
    p.add_argument(
        "--headline-min-mpx",
        type=float,
        default=4,
        help="smallest scene in the headline time / memory ratios",
    )
    p.add_argument("--large-mpx", type=float, default=300, help="from this size on, run only --large-rows")
    p.add_argument(
        "--large-rows",
        default="gigaseg,monai-gaussian,chips-average",
        help="rows run at the largest sizes (the in-memory peers there, to show where they stop)",
    )
    p.add_argument("--ref-max-mpx", type=float, default=17, help="largest scene for the untiled reference")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row before it is killed")
    p.add_argument("--mem-cap", type=float, default=14, help="GiB of RSS per row before it is killed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA rows: untested so far)")
    p.add_argument("--amp", action="store_true", help="also AMP rows (CUDA only)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.child:
        res = run_child(json.loads(args.child))
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    def side_of(mpx: float) -> int:
        return max(512, round(math.sqrt(mpx * 1e6) / 512) * 512)

    if args.repeat < 1:
        p.error(f"--repeat must be ≥ 1, got {args.repeat}")
    sizes = [4, 16] if args.quick else [float(s) for s in args.sizes.split(",") if s]
    unet_sizes = [1] if args.quick else [float(s) for s in args.unet_sizes.split(",") if s]
    cli_sizes = {side_of(float(s)) for s in args.cli_sizes.split(",") if s}
    ray_sizes = {side_of(float(s)) for s in args.ray_sizes.split(",") if s}
    cases = [
        Case("U-Net w16 d3 (same padding), 3 classes", "unet",
             {"width": 16, "depth": 3, "padding": "same"}, 3, 256, 4, [side_of(s) for s in unet_sizes]),
        Case("1×1 conv, 2 classes", "conv1x1", {}, 2, 512, 8, [side_of(s) for s in sizes],
             skip_by_default=("monai-gaussian-cl",)),
    ]  # fmt: skip
    amps = [False, True] if args.amp and args.device.startswith("cuda") else [False]
    work = args.work or Path(tempfile.mkdtemp(prefix="gigaseg-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    overlap = 0.25
    cap = int(args.mem_cap * 2**30)
    load0 = os.getloadavg()
    started = dt.datetime.now()
    lines: list[str] = []
    summary: list[dict[str, Any]] = []
    for case in cases:
        rows = (
            [r for r in args.rows.split(",") if r]
            if args.rows is not None
            else [r for r in ROWS if r not in case.skip_by_default]
        )
        ckpt = make_checkpoint(case, work / f"{case.arch}.safetensors")
        failed: dict[str, str] = {}
        if _nnunet_version() is None:
            failed["nnunet"] = failed["nnunet AMP"] = "nnU-Net is not installed: `make peer-tools`"
        for side in case.sizes:
            mpx = side * side / 1e6
            scene = write_scene(work / f"scene_{side}.tif", side)
            seam = mpx <= args.ref_max_mpx
            stride = case.tile - round(case.tile * overlap)
            base = dict(scene=str(scene), ckpt=str(ckpt), tile=case.tile, overlap=overlap, batch=case.batch,
                        device=args.device)  # fmt: skip
            refs: dict[str, RowResult] = {}
            if seam:
                for name in REFERENCES:
                    out = work / f"{case.arch}_{side}_{name}"
                    refs[name] = run_row(
                        dict(base, row=name, amp=False, seam=True, out=str(out)), args.timeout, cap
                    )
                    print(f"{case.arch} {side}² {name}: {refs[name].status} {refs[name].seconds:.1f} s "
                          f"{refs[name].rss / 2**20:.0f} MiB", flush=True)  # fmt: skip
            band = _border_band((side, side), case.tile, stride) if refs else None

            for name, ref in refs.items():
                plain = refs["reference"]
                err = None
                if name == "reference-cl" and ref.status == "ok" and plain.status == "ok":
                    err = seam_error(ref.out, plain.out, band)
                summary.append(dict(case=case.arch, side=side, row=name, res=merge_runs([ref]), err=err))
            plan = [
                (amp, row)
                for amp in amps
                for row in rows
                if not (row == "gigaseg-cli" and side not in cli_sizes)
                and not (row == "gigaseg-ray" and side not in ray_sizes)
                and not (mpx >= args.large_mpx and row not in args.large_rows.split(","))
            ]
            repeats = args.repeat if mpx <= args.repeat_max_mpx else 1
            runs: dict[str, list[RowResult]] = {}
            errs: dict[str, dict[str, float] | None] = {}
            for rep in range(repeats):
                for amp, row in plan:
                    key = f"{row}{' AMP' if amp else ''}"
                    if key in failed:
                        if rep == 0:
                            runs[key] = [RowResult(f"not run ({failed[key]})")]
                        continue
                    out = work / f"{case.arch}_{side}_{row}{'_amp' if amp else ''}_{rep}"
                    first = rep == 0
                    spec = dict(base, row=row, amp=amp, seam=seam and first, out=str(out))
                    res = run_row(spec, args.timeout, cap)
                    runs.setdefault(key, []).append(res)
                    if first and res.status != "ok":
                        failed[key] = f"{res.status.split(' (')[0]} at {mpx:.0f} Mpx"
                    ref = _reference_for(row, refs)
                    if first:
                        errs[key] = seam_error(res.out, ref.out, band) if ref and res.status == "ok" else None
                    print(f"{case.arch} {side}² {key} [{rep + 1}/{repeats}]: {res.status} "
                          f"{res.seconds:.1f} s "
                          f"{res.rss / 2**20:.0f} MiB {errs.get(key) if first else ''} {res.stages or ''}",
                          flush=True)  # fmt: skip
                    if res.out is not None and not args.work:
                        shutil.rmtree(res.out, ignore_errors=True)
            for key, results in runs.items():
                summary.append(
                    dict(case=case.arch, side=side, row=key, res=merge_runs(results), err=errs.get(key))
                )
            if not args.work:
                for ref in refs.values():
                    if ref.out is not None:
                        shutil.rmtree(ref.out, ignore_errors=True)
            scene.unlink()
        items = [s for s in summary if s["case"] == case.arch]
        if items:
            lines += table(case, items, args.ref_max_mpx, args.repeat, args.repeat_max_mpx)
    load1 = os.getloadavg()
    text = "\n".join(lines)
    ratios = headline(summary, args.headline_min_mpx)
    print(text + "\n\n" + ratios)
    if not args.no_record:
        import torch

        from bench.results import write_section

        cmd = (
            "python -m bench.peer_bench"
            + (" --quick" if args.quick else "")
            + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick")
        )
        write_section(
            "Peer tools",
            f"Command: `{cmd.strip()}`  \nDate: {started:%Y-%m-%d %H:%M}, "
            f"finished {dt.datetime.now():%H:%M}  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
            f"({args.device}), torch {torch.__version__}, monai {_monai_version()}, "
            f"nnU-Net {_nnunet_version() or 'not installed'}; shared with other work: "
            f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end  \n"
            f"Tile / overlap / batch as in each table; gaussian σ = 1/8 tile everywhere; per-row limits "
            f"{args.timeout:.0f} s and {args.mem_cap:.0f} GiB RSS (the machine has "
            f"{_total_gib():.0f} GiB, shared). Seconds: gigaseg end-to-end rows from the input GeoTIFF "
            f"to the finished COG; peers from the array in memory to labels (reading the GeoTIFF into the "
            f"array, shown apart, is not counted). RSS: peak of the whole child process (the Ray row: "
            f"summed over the driver and the cluster's processes). Each row runs {args.repeat} time(s) "
            f"up to {args.repeat_max_mpx:.0f} Mpx, interleaved; the table shows the fastest.\n\n"
            f"{text}\n\n{ratios}\n",
        )
    return 0


def _monai_version() -> str:
    try:
        import monai

        return monai.__version__
    except ImportError:
        return "not installed"


def _nnunet_version() -> str | None:
    """nnU-Net's version in ``NNUNET_PATH`` (what the ``nnunet`` row imports), or None when absent."""
    import importlib.metadata

    found = list(importlib.metadata.distributions(name="nnunetv2", path=[str(NNUNET_PATH)]))
    return found[0].version if found else None


def _total_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def _fmt_mpx(mpx: float) -> str:
    return f"{mpx:.0f}" if mpx >= 1 else f"{mpx:.2f}"


def _fmt_seconds(res: RowResult) -> str:
    """Fastest run, and the range over the repeats when there were several."""
    text = f"{res.seconds:.1f}"
    if len(res.runs) > 1:
        text += f" ({min(res.runs):.1f}–{max(res.runs):.1f})"
    if res.failed_runs:
        text += f" (+{len(res.failed_runs)} run(s): {'; '.join(res.failed_runs)})"
    return text


def table(
    case: Case, items: list[dict[str, Any]], ref_max: float, repeat: int = 1, repeat_max: float = math.inf
) -> list[str]:
    """Markdown table for one case."""
    out = [
        f"### {case.name}: tile {case.tile}, overlap 0.25, batch {case.batch}",
        "",
        "| scene | row | seconds | Mpx/s | peak RSS | read (peers) | mean abs Δp | p99 abs Δp "
        "| labels ≠ in border band (%) | mean abs Δp, scene edge included |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for it in items:
        res: RowResult = it["res"]
        mpx = it["side"] ** 2 / 1e6
        scene = f"{_fmt_mpx(mpx)} Mpx ({it['side']}²)"
        name = ROW_TEXT.get(it["row"].split(" ")[0], it["row"]) + (
            " AMP" if it["row"].endswith("AMP") else ""
        )
        if res.status != "ok":
            rss = f"≥ {res.rss / 2**30:.1f} GiB" if res.rss == res.rss and res.rss > 0 else "–"
            out.append(f"| {scene} | {name} | {res.status} | – | {rss} | – | – | – | – | – |")
            continue
        mean, p99, band, mean_all = _fmt_err(it["err"])
        if it["row"] == "reference":
            mean = p99 = band = mean_all = "(reference)"
        elif it["err"] is None and mpx > ref_max:
            mean, p99, band, mean_all = "n/c", "n/c", "n/c", "n/c"
        read = f"{res.read_seconds:.1f} s" if res.read_seconds is not None else "(included)"
        gpu = f", GPU busy {res.gpu_busy:.0%}" if res.gpu_busy is not None else ""
        out.append(
            f"| {scene} | {name} | {_fmt_seconds(res)}{gpu} | {mpx / res.seconds:.2f} "
            f"| {res.rss / 2**20:,.0f} MiB "
            f"| {read} | {mean} | {p99} | {band} | {mean_all} |"
        )
    out.append("")
    notes = [
        f"n/c: not computed — the untiled reference pass is only run up to {ref_max:.0f} Mpx. Seam figures "
        f"leave out a {FRAME}-px frame at the scene edge (last column: with it); the border band is "
        f"±{BAND} px around every tile edge of the overlapping and of the non-overlapping grid.",
        "Two references, one untiled pass each: the gigaseg rows (which run the model channels-last, the "
        "engine's default) are compared with `reference-cl` (model and input channels-last), the peers "
        "with `reference` (the model in its own, contiguous layout), so the layout's float rounding is not "
        "counted as seam error; the `reference-cl` row's Δp is that rounding (against `reference`).",
    ]
    if repeat > 1:
        notes.append(
            f"Seconds: the fastest of {repeat} runs (all rows once, then all again, per scene; range in "
            f"brackets; scenes over {repeat_max:.0f} Mpx once); peak RSS: the largest of the runs; seam "
            "figures: the first run."
        )
    if any(it["row"].startswith("gigaseg-ray") for it in items):
        notes.append(
            f"Ray row: the same call with `workers={RAY_WORKERS}` on a fresh local Ray cluster; its seconds "
            "include starting the cluster (`ray_start` below) and its peak RSS is **summed over processes** "
            "(the driver and every Ray process it started: GCS, raylet, dashboard and agents, monitors, "
            "workers; sampled every 0.1 s; pages shared between processes count once per process)."
        )
    out.append(" ".join(notes))
    staged = [it for it in items if it["res"].stages]
    if staged:
        out.append("gigaseg end-to-end stages (s): " + "; ".join(
            f"{_fmt_mpx(it['side'] ** 2 / 1e6)} Mpx {it['row']}: "
            + ", ".join(f"{k} {v}" for k, v in it["res"].stages.items())
            for it in staged))  # fmt: skip
    out.append("")
    return out


def headline(summary: list[dict[str, Any]], min_mpx: float = 4) -> str:
    """gigaseg vs MONAI gaussian (and channels-last MONAI): time and memory ratios per size; seam ratios."""
    lines = [
        "Headline (same scene, same weights / tile / overlap / batch; time ratio of the fastest runs; "
        "peak RSS as % of MONAI's):",
        "",
    ]
    by = {(s["case"], s["side"], s["row"]): s["res"] for s in summary}

    def ratio(a: str, b: str, case: str, side: int, what: str, targets: bool) -> str | None:
        ga, mb = by.get((case, side, a)), by.get((case, side, b))
        if ga is None or mb is None:
            return None
        if mb.status != "ok":
            verdict = f"{b}: {mb.status}"
            if ga.status == "ok":
                verdict += f"; {a} finished in {ga.seconds:.0f} s at {ga.rss / 2**20:,.0f} MiB"
            return f"{what}: {verdict}"
        if ga.status != "ok":
            return f"{what}: {a} {ga.status}"
        t = f"time **{ga.seconds / mb.seconds:.2f}×**" + (" (target ≤ 1 from 64 Mpx)" if targets else "")
        m = f"peak RSS **{ga.rss / mb.rss:.0%}**" + (" (target ≤ 25%)" if targets else "")
        return f"{what}: {t}, {m}"

    comparisons = [
        ("gigaseg", "monai-gaussian", "gigaseg end to end ÷ MONAI gaussian", True),
        ("gigaseg", "monai-gaussian-cl", "gigaseg end to end ÷ MONAI gaussian channels-last", False),
        (
            "gigaseg-array",
            "monai-gaussian",
            "gigaseg engine on an array ÷ MONAI gaussian (both in memory)",
            False,
        ),
        ("gigaseg-ray", "monai-gaussian", f"gigaseg on Ray ({RAY_WORKERS} workers) ÷ MONAI gaussian", False),
        ("gigaseg", "nnunet", "gigaseg end to end ÷ nnU-Net", False),
    ]
    for case, side in sorted({(s["case"], s["side"]) for s in summary}):
        mpx = side * side / 1e6
        if mpx < min_mpx:
            continue
        parts = [r for a, b, what, tg in comparisons if (r := ratio(a, b, case, side, what, tg))]
        if parts:
            lines.append(f"- {case}, {_fmt_mpx(mpx)} Mpx — " + "; ".join(parts))
    for case, side in sorted({(s["case"], s["side"]) for s in summary}):
        errs = {
            s["row"]: s["err"]
            for s in summary
            if (s["case"], s["side"]) == (case, side) and s["err"] and "mean" in s["err"]
        }
        if "gigaseg-array" in errs and "monai-gaussian" in errs and "naive" in errs and errs["naive"]["mean"]:
            g, m, n = errs["gigaseg-array"], errs["monai-gaussian"], errs["naive"]
            others = (
                ("gigaseg-array-crop", "gigaseg crop blending"),
                ("nnunet", "nnU-Net"),
                ("chips-average", "chips averaged"),
                ("chips-crop", "chips cropped"),
            )
            cl = ""
            if "reference-cl" in errs:
                cl = f" (channels-last rounding alone: {errs['reference-cl']['mean']:.1e})"
            lines.append(
                f"- {case}, {_fmt_mpx(side * side / 1e6)} Mpx seam error (mean |Δp|): "
                f"gigaseg {g['mean']:.2e} vs reference-cl{cl}, MONAI gaussian {m['mean']:.2e}, "
                + "".join(f"{what} {errs[r]['mean']:.2e}, " for r, what in others if r in errs)
                + f"naive {n['mean']:.2e} "
                f"→ naive ÷ gigaseg **{n['mean'] / max(g['mean'], 1e-12):.0f}×** (target ≥ 10×)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
