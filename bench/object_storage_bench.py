"""The same scene with everything on an S3 bucket vs on local disk, side by side in one run.

The bucket is moto's S3 server in its own process on loopback (what installs here),
reached directly and through :class:`bench.latency_proxy.LatencyProxy`, which makes each
request wait a round trip (``--rtt-ms``) as a distant object store would. The runs are the same
``gigaseg segment`` of a single-band scene with the 1×1 convolution (I/O-bound, so the
storage is what is measured), engine in process and untracked; the bucket run reads the
input through GDAL's ``/vsis3/``, keeps the work folder's Zarr stores on the bucket and
uploads the COG when finished. Runs alternate (local, bucket, distant, local…) so drifting
load hits all alike.

Run: ``python -m bench.object_storage_bench [--quick] [--repeats N] [--rtt-ms MS]``. Results are
printed and written to the "Object storage" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import uuid
from pathlib import Path

from bench.engine_bench import job_seconds, run_cli, write_scene
from bench.latency_proxy import LatencyProxy
from bench.loopback import start_s3_server
from bench.results import command_line, current_commit, table_head, write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3
"""Bucket run ÷ local run, wall time: the issue's bound."""


def segment_args(source: str, output: str) -> list[str]:
    """The run both sides make (the engine bench's I/O-bound row)."""
    return [
        "segment", source, "-m", "arch:conv1x1", "--num-classes", "2", "-o", output,
        "--tile", "512", "--batch-size", "8", "--quiet",
    ]  # fmt: skip


SIDES = ("local", "bucket", "distant")
"""Local disk; the bucket on loopback; the same bucket behind the latency proxy (``--rtt-ms``)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 2048² scene (smoke test of the bench)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating)")
    p.add_argument("--rtt-ms", type=float, default=20.0, help="the distant bucket's round trip per request")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    side = 2048 if args.quick else 8192
    tmp = Path(tempfile.mkdtemp(prefix="gigaseg-bench-s3-"))
    scene = write_scene(tmp / "gray.tif", 1, side)
    server, env = start_s3_server(key="bench")
    os.environ.update(env)
    proxy = LatencyProxy(int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), args.rtt_ms / 1000)
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(scene), bucket, "scenes/gray.tif")
        warm = write_scene(tmp / "warm.tif", 1, 256)  # the shared Prefect server starts here, untimed
        run_cli(segment_args(str(warm), str(tmp / "warm_out.tif")))
        times: dict[str, list[tuple[float, float, int]]] = {s: [] for s in SIDES}
        with proxy:
            for k in range(args.repeats):
                for name in SIDES:
                    times[name].append(_run_side(name, scene, bucket, k, tmp, env, proxy.url))
        same = _same_bytes(s3, bucket, tmp)
        server_cpu = _cpu_seconds(server.pid)
    finally:
        server.terminate()
        server.wait()
    requests = proxy.requests / args.repeats
    text = _report(args, argv, side * side / 1e6, times, requests, same, server_cpu)
    print(text)
    if not args.no_record and not args.quick:
        write_section("Object storage", text)
    return 0


def _report(
    args: argparse.Namespace,
    argv: list[str] | None,
    mpx: float,
    times: dict[str, list[tuple[float, float, int]]],
    requests: float,
    same: bool,
    server_cpu: float,
) -> str:
    """The section: each side's best command and job seconds, peak RSS, and the ratios to local disk."""
    best = {s: min(t[0] for t in times[s]) for s in SIDES}
    job = {s: min(t[1] for t in times[s]) for s in SIDES}
    peak = {s: max(t[2] for t in times[s]) / 2**20 for s in SIDES}
    rows = table_head(
        "run", f"command s (best of {args.repeats})", "job s (ingest → COG)", "Mpx/s", "peak RSS MiB"
    )
    labels = {
        "local": "local disk: input, work folder, output",
        "bucket": "S3 bucket (moto on loopback): input, work folder, output",
        "distant": f"the same bucket {args.rtt_ms:g} ms away (a round trip per request)",
    }
    rows += [
        f"| {labels[s]} | {best[s]:.1f} | {job[s]:.1f} | {mpx / best[s]:.1f} | {peak[s]:.0f} |" for s in SIDES
    ]
    load = os.getloadavg()[0]
    lines = [
        f"`{command_line('bench.object_storage_bench', argv if argv is not None else sys.argv[1:])}` — "
        f"{dt.date.today()}, commit {current_commit()}, load average {load:.1f} at the end.",
        "",
        f"{mpx:.0f} Mpx single-band uint8 scene, `arch:conv1x1`, tile 512, batch 8, engine in process, "
        "untracked (`--workers 0 --no-track`).",
        "",
        *rows,
        "",
        f"- bucket ÷ local, whole command: **{best['bucket'] / best['local']:.2f}×** (target ≤ {TARGET}); "
        f"job only: {job['bucket'] / job['local']:.2f}×; peak RSS {peak['bucket'] / peak['local']:.2f}×",
        f"- {args.rtt_ms:g} ms away ÷ local, whole command: **{best['distant'] / best['local']:.2f}×**; "
        f"job only: {job['distant'] / job['local']:.2f}×; {requests:.0f} requests "
        f"per run, so {requests * args.rtt_ms / 1000:.1f} s of round trips if each "
        "waited for the one before",
        f"- both bucket runs' COGs are byte-identical to the local one: **{'yes' if same else 'NO'}**",
        f"- the S3 server itself (moto, Python, on the same {os.cpu_count()} cores) used "
        f"{server_cpu:.1f} CPU-s over the whole bench ({2 * args.repeats} bucket runs and the upload): "
        f"about {server_cpu / (2 * args.repeats):.1f} CPU-s per bucket run (the upload shared among them) "
        "that a remote store would not take from this machine",
    ]
    return "\n".join(lines)


def _run_side(
    name: str, scene: Path, bucket: str, k: int, tmp: Path, env: dict[str, str], distant: str
) -> tuple[float, float, int]:
    """One run of a side: command seconds, job seconds, peak RSS (bytes)."""
    if name == "local":
        args = segment_args(str(scene), str(tmp / f"local{k}.tif"))
    else:
        args = segment_args(f"s3://{bucket}/scenes/gray.tif", f"s3://{bucket}/results/{name}{k}.tif")
    os.environ["AWS_ENDPOINT_URL"] = distant if name == "distant" else env["AWS_ENDPOINT_URL"]
    try:
        secs, peak, err = run_cli(args)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]
    return secs, job_seconds(err), peak


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _same_bytes(s3, bucket: str, tmp: Path) -> bool:
    """Whether both bucket sides' first COGs are the local one, byte for byte."""
    local = (tmp / "local0.tif").read_bytes()
    for name in ("bucket", "distant"):
        got = tmp / f"from_{name}.tif"
        s3.download_file(bucket, f"results/{name}0.tif", str(got))
        if got.read_bytes() != local:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
