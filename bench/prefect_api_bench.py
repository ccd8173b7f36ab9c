"""Round trips to the shared local Prefect server: this code's server against another revision's.

Starts two shared servers, each with its own temporary state folder (so its own
SQLite database, nothing of the user's touched): one from this checkout and one
from ``--baseline REV`` (a temporary git worktree). Then, interleaved, a fresh
process per side finds its server as a command does (``use_prefect_api``) and
measures, with this checkout's client code:

- requests: ``GET /api/admin/storage`` repeated on one kept-alive connection (as
  Prefect's client keeps its connection): the median after the first;
- flow runs: ``--flows`` runs, back to back in the one process (as a batch of
  scenes or a watch runs them), of a flow of nine no-op tasks (the segment flow's
  count): seconds per run and the 503 answers the client saw.

Run: ``python -m bench.prefect_api_bench [--baseline REV] [--flows N] [--repeats N]``;
it prints its section and writes it to bench/RESULTS.md (``--no-record``: not).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.baseline import checkout, python_path
from bench.results import command_line, current_commit, load_text, table_head, write_section

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "9d7f5f2"
"""The server before it named IPPROTO_TCP and retried SQLite's refusals itself."""
TASKS = 9
REQUESTS = 20
RESULT_PREFIX = "RESULT "


def _child(flows: int) -> None:
    """In a fresh process: find the side's server, time its requests and back-to-back flow runs."""
    import httpx
    from prefect import flow, task

    from flows.prefect_server import use_prefect_api
    from flows.segment_scene import STAGE

    url = use_prefect_api()
    refused = 0
    send = httpx.Client.send

    def counting_send(self: httpx.Client, request: httpx.Request, *args, **kwargs) -> httpx.Response:
        nonlocal refused
        response = send(self, request, *args, **kwargs)
        refused += response.status_code == 503
        return response

    httpx.Client.send = counting_send  # type: ignore[method-assign]

    with httpx.Client(base_url=url) as client:
        seconds = []
        for _ in range(REQUESTS):
            t0 = time.perf_counter()
            client.get("/admin/storage").raise_for_status()
            seconds.append(time.perf_counter() - t0)

    @task(name="no-op", **STAGE)
    def no_op(i: int) -> int:
        return i

    @flow(name="prefect-api-bench")
    def nine_tasks() -> list[int]:
        return [no_op(i) for i in range(TASKS)]

    runs = []
    for _ in range(flows):
        t0 = time.perf_counter()
        nine_tasks()
        runs.append(time.perf_counter() - t0)
    result = {
        "kept_alive": statistics.median(seconds[1:]),
        "runs": runs,
        "refused": refused,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _env(code: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "GIGASEG_PREFECT"))}
    env.update(
        {
            "PYTHONPATH": python_path(code, env),
            "GIGASEG_STATE_DIR": str(state),
            "GIGASEG_PREFECT_IDLE_MINUTES": "0",
        }
    )
    return env


def _server(code: Path, state: Path, action: str) -> None:
    """``gigaseg server start|stop`` with ``code``'s modules on the side's state folder."""
    command = [sys.executable, "-m", "flows.cli", "server", action]
    subprocess.run(command, cwd=code, env=_env(code, state), check=True, capture_output=True, timeout=300)


def _measure(state: Path, flows: int) -> dict:
    command = [sys.executable, "-m", "bench.prefect_api_bench", "--child", str(flows)]
    done = subprocess.run(
        command, cwd=ROOT, env=_env(ROOT, state), capture_output=True, text=True, timeout=600
    )
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"the measuring process failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(found[-1][len(RESULT_PREFIX) :])


@contextlib.contextmanager
def _servers(sides: dict[str, Path], tmp: Path) -> Iterator[dict[str, Path]]:
    """Each side's server started on its own state folder; all stopped afterwards."""
    states = {name: tmp / name for name in sides}
    try:
        for name, code in sides.items():
            _server(code, states[name], "start")
        yield states
    finally:
        for name, code in sides.items():
            with contextlib.suppress(subprocess.SubprocessError):
                _server(code, states[name], "stop")


def _summary(results: list[dict]) -> dict[str, float]:
    runs = [s for r in results for s in r["runs"]]
    later = [s for r in results for s in r["runs"][1:]]
    return {
        "kept_alive": statistics.median(r["kept_alive"] for r in results),
        "first_run": statistics.median(r["runs"][0] for r in results),
        "later_runs": statistics.median(later) if later else float("nan"),
        "worst_run": max(runs),
        "refused": sum(r["refused"] for r in results),
    }


def _report(baseline: str, sums: dict[str, dict[str, float]], args: argparse.Namespace, loads: tuple) -> str:
    head = table_head(
        "server",
        "request, kept-alive connection (median ms)",
        "first flow run (s)",
        "later flow runs (median s)",
        "slowest run (s)",
        "503s the client saw",
    )
    rows = []
    for name, s in sums.items():
        rows.append(
            f"| {name} | {s['kept_alive'] * 1e3:.1f} | {s['first_run']:.2f} | "
            f"{s['later_runs']:.2f} | {s['worst_run']:.2f} | {s['refused']} |"
        )
    old, new = sums[f"baseline {baseline}"], sums["this code"]
    argv = [f"--baseline {baseline}", f"--flows {args.flows}", f"--repeats {args.repeats}"]
    lines = [
        f"`{command_line('bench.prefect_api_bench', argv)}` — {dt.date.today()}, commit {current_commit()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, {load_text(*loads)}.",
        "",
        "Two shared local Prefect servers, each on its own new SQLite database; a fresh process per side "
        f"and repeat ({args.repeats}, interleaved) finds its server as a command does, then times {REQUESTS} "
        f"`GET /api/admin/storage` on one connection and {args.flows} back-to-back runs of a flow of {TASKS} "
        "no-op tasks (this checkout's client code on both sides).",
        "",
        *head,
        *rows,
        "",
        "- request on a kept-alive connection, this code ÷ baseline: "
        f"**{new['kept_alive'] / old['kept_alive']:.2f}×**",
        f"- a flow run after the first in one process: **{new['later_runs'] / old['later_runs']:.2f}×**; "
        f"the first: {new['first_run'] / old['first_run']:.2f}×",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="the revision whose server is compared")
    p.add_argument("--flows", type=int, default=5, help="flow runs per process, back to back")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    start_load = os.getloadavg()[0]
    baseline = f"baseline {args.baseline}"
    with (
        checkout(args.baseline) as old,
        tempfile.TemporaryDirectory(prefix="gigaseg-prefect-api-") as tmp,
        _servers({baseline: old, "this code": ROOT}, Path(tmp)) as states,
    ):
        results: dict[str, list[dict]] = {name: [] for name in states}
        for repeat in range(args.repeats):
            for name, state in states.items():
                results[name].append(_measure(state, args.flows))
                print(f"{name} [{repeat + 1}/{args.repeats}]: {results[name][-1]}", flush=True)
    sums = {name: _summary(r) for name, r in results.items()}
    body = _report(args.baseline, sums, args, (start_load, os.getloadavg()[0]))
    print(body)
    if not args.no_record:
        write_section("Prefect's API round trips", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
