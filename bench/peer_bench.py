"""gigaseg against the tiled-inference tools users would pick instead (issue 9), side by side.

For the same weights, the same single-band scene and the same tile / overlap /
batch, each row runs in a fresh child process (so its peak RSS is its own, whole
process, imports included):

- ``gigaseg``: end to end, GeoTIFF → scene store → blocks → COG, in process
  (``pipeline.job.steps.segment``, the library call under ``gigaseg segment --workers 0
  --no-track``: no Ray, no MLflow, no Prefect start-up);
- ``gigaseg-cli``: the same through the ``gigaseg segment --workers 0 --no-track``
  command (Prefect flow included), at the sizes given by ``--cli-sizes``; the shared
  Prefect server is started and runs one unmeasured command first, as a user's earlier
  commands leave it;
- ``gigaseg-ray``: the ``gigaseg`` row with 2 workers on a fresh local Ray cluster
  (start-up counted; RSS summed over the driver and the cluster's processes), at
  the sizes given by ``--ray-sizes``;
- ``gigaseg-array``: the engine on the image already in memory
  (:func:`pipeline.engine.in_memory.segment_array`, blockwise);
- ``gigaseg-array-crop``: the same with crop blending (``--blend crop``: each tile
  keeps its centre), the engine's counterpart of ``chips-crop``;
- ``monai-constant`` / ``monai-gaussian``: MONAI ``sliding_window_inference``;
- ``monai-user``: what a MONAI user writes instead of gigaseg, file to file: rasterio read,
  the gaussian sliding window, labels, a COG with MODE overviews through GDAL;
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
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from bench.devices import device_option
from bench.peers.fixtures import bench_cases, side_of
from bench.peers.measure import Measured
from bench.peers.report import RunInfo, headline, results_section, table
from bench.peers.rows import RAY_WORKERS
from bench.peers.session import CaseBench, Settings
from bench.results import command_line


def build_parser() -> argparse.ArgumentParser:
    """The command's options (``--child`` is how the bench starts a row's process)."""
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
    p.add_argument(
        "--device",
        default="cpu",
        type=device_option,
        help="cpu or cuda[:N]; CUDA runs are recorded in their own section (see bench/gpu_check.sh)",
    )
    p.add_argument("--amp", action="store_true", help="also AMP rows (CUDA only)")
    p.add_argument(
        "--workers-per-gpu", type=int, default=1, help="the Ray row on a GPU: actors sharing each GPU"
    )
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    return p


def _mpx_list(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s]


def settings_from(args: argparse.Namespace) -> Settings:
    """What the options decide for every case; the scratch folder made."""
    work = args.work or Path(tempfile.mkdtemp(prefix="gigaseg-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    return Settings(
        work=work,
        keep_outputs=args.work is not None,
        device=args.device,
        timeout=args.timeout,
        cap_bytes=int(args.mem_cap * 2**30),
        amps=[False, True] if args.amp and args.device.startswith("cuda") else [False],
        rows=[r for r in args.rows.split(",") if r] if args.rows is not None else None,
        cli_sides={side_of(s) for s in _mpx_list(args.cli_sizes)},
        ray_sides={side_of(s) for s in _mpx_list(args.ray_sizes)},
        large_mpx=args.large_mpx,
        large_rows=args.large_rows.split(","),
        ref_max_mpx=args.ref_max_mpx,
        repeat=args.repeat,
        repeat_max_mpx=args.repeat_max_mpx,
        workers_per_gpu=args.workers_per_gpu,
    )


def section_name(device: str) -> str:
    """The ``bench/RESULTS.md`` section a run on ``device`` writes: a GPU's rows never replace the CPU's.

    >>> section_name("cpu"), section_name("cuda:0")
    ('Peer tools', 'Peer tools on a GPU')
    """
    return "Peer tools on a GPU" if device.startswith("cuda") else "Peer tools"


def _command(args: argparse.Namespace, argv: list[str] | None) -> str:
    """The command as run, ``--quick`` first (recorded in the results section)."""
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    return command_line("bench.peer_bench", (["--quick"] if args.quick else []) + given).strip()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        from bench.peers.child import child_main

        return child_main(args.child)
    if args.repeat < 1:
        parser.error(f"--repeat must be ≥ 1, got {args.repeat}")
    sizes = [4, 16] if args.quick else _mpx_list(args.sizes)
    unet_sizes = [1] if args.quick else _mpx_list(args.unet_sizes)
    settings = settings_from(args)
    load0, started = os.getloadavg(), dt.datetime.now()
    lines: list[str] = []
    summary: list[Measured] = []
    for case in bench_cases(sizes, unet_sizes):
        items = CaseBench(case, settings).run()
        summary += items
        if items:
            lines += table(case, items, args.ref_max_mpx, args.repeat, args.repeat_max_mpx)
    loads = (load0[0], os.getloadavg()[0])
    report = "\n".join(lines) + "\n\n" + headline(summary, args.headline_min_mpx)
    print(report)
    if not args.no_record:
        from bench.results import write_section

        run = RunInfo(_command(args, argv), started, loads, args.device, args.timeout, args.mem_cap,
                      args.repeat, args.repeat_max_mpx)  # fmt: skip
        write_section(section_name(args.device), results_section(run, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
