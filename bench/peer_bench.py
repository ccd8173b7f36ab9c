"""gigaseg against the tiled-inference tools users would pick instead (issue 9), side by side.

For the same weights, the same single-band scene and the same tile / overlap /
batch, each row runs in a fresh child process (so its peak RSS is its own, whole
process, imports included):

- ``gigaseg``: end to end, GeoTIFF → scene store → blocks → COG, in process
  (``pipeline.segment.segment``, the library call under ``gigaseg segment --workers 0
  --no-track``: no Ray, no MLflow, no Prefect start-up);
- ``gigaseg-cli``: the same through the ``gigaseg segment --workers 0 --no-track``
  command (Prefect flow included), at the sizes given by ``--cli-sizes``;
- ``gigaseg-array``: the engine on the image already in memory
  (:func:`pipeline.array_inference.segment_array`, blockwise);
- ``monai-constant`` / ``monai-gaussian``: MONAI ``sliding_window_inference``;
- ``chips-average``: TorchGeo / Raster Vision-style chip prediction (whole scene in
  memory, chips at the same stride, last chip flush with the edge, plain averaging);
- ``naive``: non-overlapping tiles.

Peers get the image as an array read before their clock starts (their "seconds"
is in-memory time: normalise → tiles → labels; the read is shown apart); gigaseg's
end-to-end rows pay for reading and writing files. Seam error compares each row's
probabilities with one untiled forward pass of the same fully convolutional model
over the whole scene, where that fits (``--ref-max-mpx``). A row that passes the
memory cap or the time limit is killed and the table says so.

Run: ``python -m bench.peer_bench [--quick] [--sizes 4,16,64,256,1024]``; results
go to the "Peer tools" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
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
    "gigaseg-array",
    "monai-constant",
    "monai-gaussian",
    "chips-average",
    "naive",
)
ROW_TEXT = {
    "gigaseg": "gigaseg end to end (GeoTIFF → COG, in process, untracked)",
    "gigaseg-cli": "`gigaseg segment --workers 0 --no-track` (whole command, Prefect flow)",
    "gigaseg-array": "gigaseg engine on an in-memory array (`segment_array`)",
    "monai-constant": "MONAI `sliding_window_inference`, constant",
    "monai-gaussian": "MONAI `sliding_window_inference`, gaussian",
    "chips-average": "chip prediction, plain averaging (TorchGeo / Raster Vision style)",
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


# ------------------------------------------------------------------------- child side


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _predictor(model, device, amp: bool):
    import contextlib

    import torch

    from pipeline.device import autocast_dtype

    dtype = autocast_dtype(device) if amp else None

    def predict(tiles):
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return torch.softmax(model(tiles.to(device, non_blocking=True)).float(), dim=1)

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


_ROW_IMPORTS = {
    "gigaseg": ("pipeline.segment", "pipeline.config"),
    "gigaseg-cli": ("flows.cli", "flows.segment_scene"),
    "gigaseg-array": ("pipeline.array_inference",),
    "monai-constant": ("monai.inferers",),
    "monai-gaussian": ("monai.inferers",),
}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one row; returns seconds, peak RSS and where its outputs went."""
    import torch

    from models.checkpoint import load_checkpoint
    from pipeline.normalization import normalize

    row, out = spec["row"], Path(spec["out"])
    # Imports happen before any clock starts, for every row alike.
    import importlib

    for module in _ROW_IMPORTS.get(row, ()):
        importlib.import_module(module)
    device = torch.device(spec["device"])
    tile, overlap, batch = spec["tile"], spec["overlap"], spec["batch"]
    stride = tile - round(tile * overlap)
    result: dict[str, Any] = {"row": row}
    seam = spec["seam"]

    if row in ("gigaseg", "gigaseg-cli"):
        os.environ.setdefault("GDAL_CACHEMAX", "256")
        cog = out / "labels.tif"
        args = dict(
            tile=tile, overlap=overlap, blend="gaussian", batch_size=batch, quiet=True, amp=spec["amp"]
        )
        with _GpuSampler(spec["device"]) as gpu:
            t0 = time.perf_counter()
            if row == "gigaseg":
                from pipeline.config import SegmentConfig
                from pipeline.segment import segment

                summary = segment(
                    SegmentConfig(
                        input=Path(spec["scene"]),
                        model=spec["ckpt"],
                        output=cog,
                        workers=0,
                        device=spec["device"],
                        work_dir=out / "work",
                        **args,
                    )
                )
                result["stages"] = {k: round(v, 2) for k, v in summary.timings.items() if k != "tiles"}
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
        result["rss"] = _maxrss()
        result["gpu_busy"] = gpu.busy
        if seam:
            import rasterio

            with rasterio.open(cog) as src:
                np.save(out / "labels.npy", src.read(1))
        return result

    model, card = load_checkpoint(spec["ckpt"])
    model = model.to(device).eval()
    t0 = time.perf_counter()
    raw = _read_scene(spec["scene"])
    result["read_seconds"] = time.perf_counter() - t0
    predict = _predictor(model, device, spec["amp"])
    classes = card.num_classes
    probs = None
    with _GpuSampler(spec["device"]) as gpu:
        t0 = time.perf_counter()
        if row == "reference":
            x = torch.from_numpy(normalize(raw, card.normalization))
            probs = predict(x[None])[0].cpu()
            labels = _labels(probs)
        elif row == "gigaseg-array":
            from functools import partial

            from pipeline.array_inference import segment_array

            norm = partial(normalize, spec=card.normalization)
            res = segment_array(raw, model, tile, overlap, "gaussian", normalizer=norm, batch_size=batch,
                                device=device, amp=spec["amp"])  # fmt: skip
            labels = torch.from_numpy(res.labels)
        elif row.startswith("monai-"):
            from monai.inferers import sliding_window_inference

            x = torch.from_numpy(normalize(raw, card.normalization))[None]
            with torch.inference_mode():
                probs = sliding_window_inference(
                    x, (tile, tile), batch, predict, overlap=overlap, mode=row.split("-")[1],
                    sigma_scale=0.125, padding_mode="reflect", sw_device=device, device=torch.device("cpu"),
                )[0]  # fmt: skip
            probs = torch.as_tensor(probs)
            labels = _labels(probs)
        elif row == "chips-average":
            x = torch.from_numpy(normalize(raw, card.normalization))
            probs = _chips_average(x, predict, tile, stride, batch, classes)
            labels = _labels(probs)
        elif row == "naive":
            x = torch.from_numpy(normalize(raw, card.normalization))
            labels, _ = _naive(x, predict, tile, batch, classes, keep_probs=False)
        else:
            raise ValueError(f"unknown row {row!r}")
        result["seconds"] = time.perf_counter() - t0
    result["rss"] = _maxrss()
    result["gpu_busy"] = gpu.busy
    if seam:  # after the clock and the RSS reading: outputs for the seam error
        if row == "gigaseg-array":
            res = segment_array(raw, model, tile, overlap, "gaussian", normalizer=norm, batch_size=batch,
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


def run_row(spec: dict[str, Any], timeout: float, cap_bytes: int) -> RowResult:
    """Run one row in a fresh process, killing it past ``timeout`` or ``cap_bytes`` of RSS."""
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
        "ok", r["seconds"], r["rss"], r.get("read_seconds"), r.get("gpu_busy"), r.get("stages"), out
    )


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
    p.add_argument("--unet-sizes", default="4", help="U-Net scene sizes in Mpx (comma list; empty: none)")
    p.add_argument("--cli-sizes", default="64", help="sizes (Mpx) that also get the gigaseg-cli row")
    p.add_argument("--rows", default=",".join(r for r in ROWS), help="rows to run")
    p.add_argument("--large-mpx", type=float, default=300, help="from this size on, run only --large-rows")
    p.add_argument(
        "--large-rows",
        default="gigaseg,monai-gaussian,chips-average",
        help="rows run at the largest sizes (the in-memory peers there, to show where they stop)",
    )
    p.add_argument("--ref-max-mpx", type=float, default=17, help="largest scene for the untiled reference")
    p.add_argument("--timeout", type=float, default=600, help="seconds per row before it is killed")
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

    sizes = [4, 16] if args.quick else [float(s) for s in args.sizes.split(",") if s]
    unet_sizes = [1] if args.quick else [float(s) for s in args.unet_sizes.split(",") if s]
    cli_sizes = {side_of(float(s)) for s in args.cli_sizes.split(",") if s}
    cases = [
        Case("U-Net w16 d3 (same padding), 3 classes", "unet",
             {"width": 16, "depth": 3, "padding": "same"}, 3, 256, 4, [side_of(s) for s in unet_sizes]),
        Case("1×1 conv, 2 classes", "conv1x1", {}, 2, 512, 8, [side_of(s) for s in sizes]),
    ]  # fmt: skip
    rows = [r for r in args.rows.split(",") if r]
    amps = [False, True] if args.amp and args.device.startswith("cuda") else [False]
    work = args.work or Path(tempfile.mkdtemp(prefix="gigaseg-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    overlap = 0.25
    load0 = os.getloadavg()
    started = dt.datetime.now()
    lines: list[str] = []
    summary: list[dict[str, Any]] = []
    for case in cases:
        ckpt = make_checkpoint(case, work / f"{case.arch}.safetensors")
        failed: dict[str, str] = {}
        for side in case.sizes:
            mpx = side * side / 1e6
            scene = write_scene(work / f"scene_{side}.tif", side)
            seam = mpx <= args.ref_max_mpx
            stride = case.tile - round(case.tile * overlap)
            base = dict(scene=str(scene), ckpt=str(ckpt), tile=case.tile, overlap=overlap, batch=case.batch,
                        device=args.device, seam=seam)  # fmt: skip
            ref = None
            if seam:
                spec = dict(base, row="reference", amp=False, out=str(work / f"{case.arch}_{side}_reference"))
                ref = run_row(spec, args.timeout, int(args.mem_cap * 2**30))
                print(f"{case.arch} {side}² reference: {ref.status} {ref.seconds:.1f} s", flush=True)
            band = _border_band((side, side), case.tile, stride) if ref and ref.status == "ok" else None
            for amp in amps:
                for row in rows:
                    if row == "gigaseg-cli" and side not in cli_sizes:
                        continue
                    if mpx >= args.large_mpx and row not in args.large_rows.split(","):
                        continue
                    key = f"{row}{' AMP' if amp else ''}"
                    if key in failed:
                        res = RowResult(f"not run ({failed[key]})")
                    else:
                        out = work / f"{case.arch}_{side}_{row}{'_amp' if amp else ''}"
                        res = run_row(dict(base, row=row, amp=amp, out=str(out)), args.timeout,
                                      int(args.mem_cap * 2**30))  # fmt: skip
                        if res.status != "ok":
                            failed[key] = f"{res.status.split(' (')[0]} at {mpx:.0f} Mpx"
                    err = (
                        seam_error(res.out, ref.out, band)
                        if band is not None and res.status == "ok"
                        else None
                    )
                    summary.append(dict(case=case.arch, side=side, row=key, res=res, err=err))
                    print(f"{case.arch} {side}² {key}: {res.status} {res.seconds:.1f} s "
                          f"{res.rss / 2**20:.0f} MiB {err or ''} {res.stages or ''}",
                          flush=True)  # fmt: skip
                    if res.out is not None and not args.work:
                        shutil.rmtree(res.out, ignore_errors=True)
            if ref is not None and ref.out is not None and not args.work:
                shutil.rmtree(ref.out, ignore_errors=True)
            scene.unlink()
        lines += table(case, [s for s in summary if s["case"] == case.arch], args.ref_max_mpx)
    load1 = os.getloadavg()
    text = "\n".join(lines)
    ratios = headline(summary)
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
            f"({args.device}), torch {torch.__version__}, monai {_monai_version()}; shared with other work: "
            f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end  \n"
            f"Tile / overlap / batch as in each table; gaussian σ = 1/8 tile everywhere; per-row limits "
            f"{args.timeout:.0f} s and {args.mem_cap:.0f} GiB RSS (the machine has "
            f"{_total_gib():.0f} GiB, shared). Seconds: gigaseg end-to-end rows from the input GeoTIFF "
            f"to the finished COG; peers from the array in memory to labels (reading the GeoTIFF into the "
            f"array, shown apart, is not counted). RSS: peak of the whole child process.\n\n"
            f"{text}\n\n{ratios}\n",
        )
    return 0


def _monai_version() -> str:
    try:
        import monai

        return monai.__version__
    except ImportError:
        return "not installed"


def _total_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def table(case: Case, items: list[dict[str, Any]], ref_max: float) -> list[str]:
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
        scene = f"{mpx:.0f} Mpx ({it['side']}²)"
        if res.status != "ok":
            rss = f"≥ {res.rss / 2**30:.1f} GiB" if res.rss == res.rss and res.rss > 0 else "–"
            out.append(f"| {scene} | {ROW_TEXT.get(it['row'].split(' ')[0], it['row'])} | {res.status} | – | "
                       f"{rss} | – | – | – | – | – |")  # fmt: skip
            continue
        mean, p99, band, mean_all = _fmt_err(it["err"])
        if it["err"] is None and mpx > ref_max:
            mean, p99, band, mean_all = "n/c", "n/c", "n/c", "n/c"
        read = f"{res.read_seconds:.1f} s" if res.read_seconds is not None else "(included)"
        gpu = f", GPU busy {res.gpu_busy:.0%}" if res.gpu_busy is not None else ""
        name = ROW_TEXT.get(it["row"].split(" ")[0], it["row"]) + (
            " AMP" if it["row"].endswith("AMP") else ""
        )
        out.append(
            f"| {scene} | {name} | {res.seconds:.1f}{gpu} | {mpx / res.seconds:.2f} "
            f"| {res.rss / 2**20:,.0f} MiB "
            f"| {read} | {mean} | {p99} | {band} | {mean_all} |"
        )
    out.append("")
    out.append(
        f"n/c: not computed — the untiled reference pass is only run up to {ref_max:.0f} Mpx. Seam figures "
        f"leave out a {FRAME}-px frame at the scene edge (last column: with it); the border band is "
        f"±{BAND} px around every tile edge of the overlapping and of the non-overlapping grid."
    )
    if any(it["res"].stages for it in items):
        out.append("gigaseg end-to-end stages (s): " + "; ".join(
            f"{it['side'] ** 2 / 1e6:.0f} Mpx: " + ", ".join(f"{k} {v}" for k, v in it["res"].stages.items())
            for it in items if it["res"].stages))  # fmt: skip
    out.append("")
    return out


def headline(summary: list[dict[str, Any]]) -> str:
    """gigaseg end to end vs MONAI gaussian: time and memory ratios per size; seam ratios."""
    lines = ["Headline (gigaseg end to end ÷ MONAI gaussian, same scene):", ""]
    by = {(s["case"], s["side"], s["row"]): s for s in summary}
    for (case, side, row), s in sorted(by.items()):
        if row != "gigaseg":
            continue
        m = by.get((case, side, "monai-gaussian"))
        g = s["res"]
        mpx = side * side / 1e6
        if m is None:
            continue
        if m["res"].status != "ok":
            verdict = f"MONAI: {m['res'].status}"
            if g.status == "ok":
                verdict += f"; gigaseg finished in {g.seconds:.0f} s at {g.rss / 2**20:,.0f} MiB"
            lines.append(f"- {case}, {mpx:.0f} Mpx: {verdict}")
            continue
        if g.status != "ok":
            lines.append(f"- {case}, {mpx:.0f} Mpx: gigaseg {g.status}")
            continue
        lines.append(
            f"- {case}, {mpx:.0f} Mpx: time **{g.seconds / m['res'].seconds:.2f}×** "
            f"(target ≤ 1 from 64 Mpx), "
            f"peak RSS **{g.rss / m['res'].rss:.0%}** of MONAI's (target ≤ 25%)"
        )
    for case, side in sorted({(s["case"], s["side"]) for s in summary}):
        errs = {
            s["row"]: s["err"]
            for s in summary
            if (s["case"], s["side"]) == (case, side) and s["err"] and "mean" in s["err"]
        }
        if "gigaseg-array" in errs and "monai-gaussian" in errs and "naive" in errs and errs["naive"]["mean"]:
            g, m, n = errs["gigaseg-array"], errs["monai-gaussian"], errs["naive"]
            lines.append(
                f"- {case}, {side * side / 1e6:.0f} Mpx seam error (mean |Δp|): gigaseg {g['mean']:.2e}, "
                f"MONAI gaussian {m['mean']:.2e}, naive {n['mean']:.2e} → naive ÷ gigaseg "
                f"**{n['mean'] / max(g['mean'], 1e-12):.0f}×** (target ≥ 10×)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
