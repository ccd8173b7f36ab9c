"""The same scene with everything on an S3 bucket vs on local disk, side by side in one run.

The bucket is moto's S3 server in its own process on loopback (what installs here; a
real object store adds network latency this cannot show). Both runs are the same
``gigaseg segment`` of a single-band scene with the 1×1 convolution (I/O-bound, so the
storage is what is measured), engine in process and untracked; the bucket run reads the
input through GDAL's ``/vsis3/``, keeps the work folder's Zarr stores on the bucket and
uploads the COG when finished. Runs alternate (local, bucket, local, bucket…) so drifting
load hits both alike.

Run: ``python -m bench.object_storage_bench [--quick] [--repeats N]``. Results are
printed and written to the "Object storage" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.engine_bench import job_seconds, run_cli, write_scene
from bench.results import command_line, current_commit, table_head, write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3
"""Bucket run ÷ local run, wall time: the issue's bound."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3_server() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on a free loopback port, and the environment that names it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, env


def segment_args(source: str, output: str) -> list[str]:
    """The run both sides make (the engine bench's I/O-bound row)."""
    return [
        "segment", source, "-m", "arch:conv1x1", "--num-classes", "2", "-o", output,
        "--tile", "512", "--batch-size", "8", "--quiet",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 2048² scene (smoke test of the bench)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating)")
    p.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    side = 2048 if args.quick else 8192
    tmp = Path(tempfile.mkdtemp(prefix="gigaseg-bench-s3-"))
    scene = write_scene(tmp / "gray.tif", 1, side)
    server, env = start_s3_server()
    os.environ.update(env)
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(scene), bucket, "scenes/gray.tif")
        warm = write_scene(tmp / "warm.tif", 1, 256)  # the shared Prefect server starts here, untimed
        run_cli(segment_args(str(warm), str(tmp / "warm_out.tif")))
        times: dict[str, list[tuple[float, float, int]]] = {"local": [], "bucket": []}
        for k in range(args.repeats):
            out = tmp / f"local{k}.tif"
            secs, peak, err = run_cli(segment_args(str(scene), str(out)))
            times["local"].append((secs, job_seconds(err), peak))
            secs, peak, err = run_cli(
                segment_args(f"s3://{bucket}/scenes/gray.tif", f"s3://{bucket}/results/out{k}.tif")
            )
            times["bucket"].append((secs, job_seconds(err), peak))
        same = _same_bytes(s3, bucket, tmp)
        server_cpu = _cpu_seconds(server.pid)
    finally:
        server.terminate()
        server.wait()
    local, remote = (min(t[0] for t in times[s]) for s in ("local", "bucket"))
    local_job, remote_job = (min(t[1] for t in times[s]) for s in ("local", "bucket"))
    local_peak, remote_peak = (max(t[2] for t in times[s]) / 2**20 for s in ("local", "bucket"))
    mpx = side * side / 1e6
    rows = table_head(
        "run", f"command s (best of {args.repeats})", "job s (ingest → COG)", "Mpx/s", "peak RSS MiB"
    )
    rows += [
        f"| local disk: input, work folder, output | {local:.1f} | {local_job:.1f} | {mpx / local:.1f} "
        f"| {local_peak:.0f} |",
        f"| S3 bucket (moto on loopback): input, work folder, output | {remote:.1f} | {remote_job:.1f} "
        f"| {mpx / remote:.1f} | {remote_peak:.0f} |",
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
        f"- bucket ÷ local, whole command: **{remote / local:.2f}×** (target ≤ {TARGET}); "
        f"job only: {remote_job / local_job:.2f}×; peak RSS {remote_peak / local_peak:.2f}×",
        f"- the bucket's COG is byte-identical to the local one: **{'yes' if same else 'NO'}**",
        f"- the S3 server itself (moto, Python, on the same {os.cpu_count()} cores) used "
        f"{server_cpu:.1f} CPU-s over the whole bench ({args.repeats} bucket runs and the upload): "
        f"about {server_cpu / args.repeats:.1f} CPU-s per bucket run (the upload shared among them) that a "
        "remote store would not take from this machine",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record and not args.quick:
        write_section("Object storage", text)
    return 0


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _same_bytes(s3, bucket: str, tmp: Path) -> bool:
    got = tmp / "from_bucket.tif"
    s3.download_file(bucket, "results/out0.tif", str(got))
    return got.read_bytes() == (tmp / "local0.tif").read_bytes()


if __name__ == "__main__":
    sys.exit(main())
