"""onnxruntime against torch (channels-last) for the demo U-Net, at the same batch.

The demo's network (U-Net width 8, depth 2, ``padding="valid"`` as ``gigaseg demo`` trains
it; ``--padding same`` for the configuration ``gigaseg export-onnx`` exports with free
sizes) is exported to ONNX at the benchmark's batch and tile, and both run the same
``(batch, 4, tile, tile)`` input: torch under ``inference_mode`` with channels-last
weights and input (as the engine runs it; on CUDA with AMP), onnxruntime through
gigaseg's :class:`~models.formats.onnx_model.OnnxNetwork` (CPU provider, or CUDA's when
the input is on a GPU and ``onnxruntime-gpu`` is installed). Prints the median time per
batch of each, the ratio onnxruntime / torch, and the largest logit difference.

Timings mean something only on a quiet machine: run it alone.
Run: ``python -m bench.onnx_bench [--batch 8] [--tile 256] [--repeats 10] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models import build
from models.formats.onnx_export import _quiet_exporter
from models.formats.onnx_model import OnnxNetwork, providers_for


def _median_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    run()  # warm-up: allocations, oneDNN / cuDNN kernel choice, ORT graph optimisation
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _export_static(net: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    """The network as ONNX at exactly ``x``'s shape (the valid-padding U-Net exports no other way)."""
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(net, (x,), input_names=["image"], output_names=["logits"], dynamo=True)
        program.save(str(path), external_data=False)
    return path


def main(argv: list[str] | None = None) -> None:
    """Time both runtimes and print one line each plus the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = {"width": args.width, "depth": args.depth, "padding": args.padding}
    model = build("unet", in_channels=4, num_classes=5, **config).eval()
    x = torch.randn(args.batch, 4, args.tile, args.tile)
    folder = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    ort_net = OnnxNetwork(_export_static(model.net, x, folder / "unet.onnx"))
    ort_net.session(device)  # made from the file, which may go now
    shutil.rmtree(folder)
    model = model.to(device).to(memory_format=torch.channels_last)
    x = x.to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    amp = (
        torch.autocast("cuda", dtype=torch.float16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def torch_run() -> torch.Tensor:
        with torch.inference_mode(), amp:
            return model.net(x_cl)

    t_torch = _median_seconds(torch_run, args.repeats, sync)
    t_ort = _median_seconds(lambda: ort_net(x), args.repeats, sync)
    diff = float((ort_net(x) - torch_run().float()).abs().max())
    what = (
        f"U-Net {config}, batch {args.batch} × 4 × {args.tile}², {device}, {torch.get_num_threads()} threads"
    )
    print(f"{what}")
    print(f"torch (channels-last{', AMP' if device.type == 'cuda' else ''}): {t_torch * 1000:.1f} ms/batch")
    print(f"onnxruntime ({providers_for(device)[0]}): {t_ort * 1000:.1f} ms/batch")
    print(f"ratio onnxruntime / torch: {t_ort / t_torch:.2f}; largest logit difference {diff:.2e}")


if __name__ == "__main__":
    main()
