"""Fixed cost of one ``gigaseg segment`` command on a small scene, with the embedded defaults.

Times whole commands (a fresh process each, as a user runs them) on a generated
1024² 4-band scene with the ``arch:conv1x1`` model, from a scratch folder (its own
``mlflow.db``) and a private shared-Prefect-server state folder, so nothing of the
user's is touched:

1. first ever: no shared Prefect server, no databases yet;
2. cold: the server stopped (``gigaseg server stop``), its database kept;
3. warm: the server running (the usual case), with and without MLflow tracking;
4. warm with Ray forced (``--workers 2``): what a local Ray adds;
5. the previous defaults: Prefect's ephemeral API + a local Ray (``--workers 2``).

Each command is split into interpreter start, imports, finding/starting the
Prefect API, the flow (Prefect and MLflow bookkeeping, and Ray when used) and the
model work (the stages' seconds, check → export, from the summary line); the fixed
cost is the wall time minus the model work. With ``--baseline REV`` it then times warm
commands of this code and of revision REV (a temporary git worktree) in alternation, on
the same server and scene, and prints their ratio. Run: ``python -m bench.fixed_cost_bench
[--warm N] [--baseline REV]``; it prints its section and writes it to bench/RESULTS.md
(``--no-record``: not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import checkout, python_path
from bench.results import current_commit, table_head, write_section

TARGET_S = 5.0
"""Issue 21: the fixed cost of one command on a 1 Mpx scene with the embedded defaults."""
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Command:
    """One timed command: wall seconds and the child's own marks."""

    name: str
    wall: float
    startup: float
    imports: float
    api: float
    flow: float
    work: float

    @property
    def fixed(self) -> float:
        """Wall time minus the model work."""
        return self.wall - self.work


def child(marks_path: str, argv: list[str]) -> int:
    """The command itself, with marks: ``python -m bench.fixed_cost_bench --child MARKS -- ARGS``."""
    t_start = time.time()
    import flows.cli

    flows.cli.start_early(argv)  # what main() starts first, before the imports below
    with flows.cli.loading_without_collecting():  # as `gigaseg segment` loads its flow
        import flows.segment_scene

    t_imports = time.time()
    from flows.prefect_server import use_prefect_api

    use_prefect_api()
    t_api = time.time()
    rc = flows.cli.main(argv)
    t_end = time.time()
    marks = {"start": t_start, "imports": t_imports, "api": t_api, "end": t_end}
    Path(marks_path).write_text(json.dumps(marks))
    return rc


def _run(name: str, argv: list[str], env: dict[str, str], cwd: Path, code: Path = ROOT) -> Command:
    """One command of the code at ``code`` (this checkout, or a baseline's worktree), timed."""
    marks_path = cwd / "marks.json"
    marks_path.unlink(missing_ok=True)
    env = {**env, "PYTHONPATH": python_path(code)}
    t0 = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "bench.fixed_cost_bench", "--child", str(marks_path), "--", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    wall = time.time() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{name}: exit {result.returncode}\n{result.stderr[-3000:]}")
    m = json.loads(marks_path.read_text())
    summary = re.search(r"\), ([0-9.]+) s, ", result.stderr)
    work = float(summary.group(1)) if summary else float("nan")
    return Command(
        name,
        wall,
        startup=m["start"] - t0,
        imports=m["imports"] - m["start"],
        api=m["api"] - m["imports"],
        flow=m["end"] - m["api"] - work,
        work=work,
    )


def _gigaseg(args: list[str], env: dict[str, str], cwd: Path) -> None:
    command = [sys.executable, "-m", "flows.cli", *args]
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)


def _import_floor(env: dict[str, str]) -> float:
    """Seconds for a bare ``python -c "import torch, prefect"``: what no gigaseg change removes."""
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import torch, prefect"], env=env, check=True)
    return time.time() - t0


def _setting(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The scene's command line and an environment with a private state folder."""
    from pipeline.demos.sample_scene import write_sample_scene

    scene = write_sample_scene(tmp, 1024, seed=0).image
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "GIGASEG_", "MLFLOW_"))}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = python_path(ROOT, env)
    env["GIGASEG_STATE_DIR"] = str(tmp / "state")
    run = ["segment", str(scene), "-m", "arch:conv1x1", "--num-classes", "3", "-o", "out.tif", "--overwrite"]
    return run, env


def measure(tmp: Path, warm: int) -> tuple[list[Command], float]:
    """Every variant once (warm ones ``warm`` times), in the order a user meets them."""
    run, env = _setting(tmp)
    runs = [_run("first ever (no server, no databases)", run, env, tmp)]
    _gigaseg(["server", "stop"], env, tmp)
    runs.append(_run("cold (server stopped, databases kept)", run, env, tmp))
    runs += [_run(f"warm #{i + 1}", run, env, tmp) for i in range(warm)]
    runs.append(_run("warm, --no-track", [*run, "--no-track"], env, tmp))
    runs.append(_run("warm, Ray forced (--workers 2)", [*run, "--workers", "2"], env, tmp))
    ephemeral = {**env, "GIGASEG_PREFECT_SERVER": "ephemeral"}
    runs.append(_run("previous defaults: ephemeral API + Ray", [*run, "--workers", "2"], ephemeral, tmp))
    runs.append(_run("ephemeral API, no Ray", run, ephemeral, tmp))
    _gigaseg(["server", "stop", "--force"], env, tmp)
    return runs, _import_floor(env)


def report(runs: list[Command], floor: float, warm: int) -> str:
    """The table, the warm fixed cost against the target and what bounds it."""
    rows = table_head("command", "wall s", "start", "imports", "Prefect API", "flow", "model work", "fixed s")
    for c in runs:
        rows.append(
            f"| {c.name} | {c.wall:.1f} | {c.startup:.1f} | {c.imports:.1f} | {c.api:.1f} | {c.flow:.1f} "
            f"| {c.work:.1f} | **{c.fixed:.1f}** |"
        )
    warm_runs = [c for c in runs if c.name.startswith("warm #")]
    best = min(c.fixed for c in warm_runs)
    median = statistics.median_high(c.fixed for c in warm_runs)
    cold = next(c for c in runs if c.name.startswith("cold"))
    median_wall = statistics.median_high(c.wall for c in warm_runs)
    ray_cost = next(c for c in runs if "Ray forced" in c.name).wall - median_wall
    return (
        f"`python -m bench.fixed_cost_bench --warm {warm}` — {dt.date.today()}, commit {current_commit()}, "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); "
        f"1024² 4-band scene, `arch:conv1x1`, embedded defaults (shared local Prefect server, "
        f"no Ray for a small scene, MLflow on SQLite). Columns: interpreter start, imports "
        f"(flows.cli + flows.segment_scene), finding or starting the Prefect API, the flow less the "
        f"model work (Prefect and MLflow bookkeeping, Ray when used), model work (the stages, check → "
        f"export).\n\n" + "\n".join(rows) + "\n\n"
        f"- fixed cost, warm: **{median:.1f} s** median (best {best:.1f} s), target ≤ {TARGET_S:.0f} s; "
        f"cold {cold.fixed:.1f} s\n"
        f'- a bare `python -c "import torch, prefect"` takes {floor:.1f} s here, its garbage collector '
        f"on: what any command that runs a Prefect flow over torch loads\n"
        f"- a local Ray adds {ray_cost:.1f} s to a warm command (its start, the actors' start and model "
        f"load: inside the model-work column of the Ray rows)\n"
    )


def compare(tmp: Path, baseline: Path, rounds: int) -> dict[str, list[Command]]:
    """Warm commands of this code and of ``baseline`` in alternation (tracked, then ``--no-track``).

    Both use the one shared server the first command starts (each side's flow is timed as
    a client of the same server) and the same scene; a first command of each is not timed.
    """
    run, env = _setting(tmp)
    sides = {"this code": ROOT, "baseline": baseline}
    for code in sides.values():
        _run("warm-up", run, env, tmp, code)
    timed: dict[str, list[Command]] = {f"{side}{flag}": [] for side in sides for flag in ("", ", --no-track")}
    for _ in range(rounds):
        for flag, extra in (("", []), (", --no-track", ["--no-track"])):
            for side, code in sides.items():
                timed[f"{side}{flag}"].append(_run(f"{side}{flag}", [*run, *extra], env, tmp, code))
    _gigaseg(["server", "stop", "--force"], env, tmp)
    return timed


def report_comparison(timed: dict[str, list[Command]], rev: str, rounds: int) -> str:
    """Medians per side and column, and this code's ÷ the baseline's."""
    rows = table_head("warm command", "wall s", "imports", "flow", "model work", "fixed s")

    def median(commands: list[Command], column: str) -> float:
        return statistics.median_high(getattr(c, column) for c in commands)

    columns = ("wall", "imports", "flow", "work", "fixed")
    for name, commands in timed.items():
        cells = [f"{median(commands, column):.2f}" for column in columns]
        cells[-1] = f"**{cells[-1]}**"
        rows.append(f"| {name.replace('baseline', f'`{rev}`')} | " + " | ".join(cells) + " |")
    lines = []
    for flag in ("", ", --no-track"):
        ours, theirs = timed[f"this code{flag}"], timed[f"baseline{flag}"]
        ratio = {c: median(ours, c) / median(theirs, c) for c in ("fixed", "imports", "flow")}
        lines.append(
            f"- against `{rev}`{flag or ' (tracked)'}: fixed cost **{ratio['fixed']:.2f}×**, imports "
            f"{ratio['imports']:.2f}×, flow {ratio['flow']:.2f}×"
        )
    return (
        f"Against `{rev}` in the same run: {rounds} rounds of warm commands, the two revisions in "
        f"alternation on one shared server (medians):\n\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3, help="warm commands to time")
    parser.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--baseline", help="a git revision to time warm commands against, alternately")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds against --baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp_name:
        runs, floor = measure(Path(tmp_name), args.warm)
    text = report(runs, floor, args.warm)
    if args.baseline:
        with checkout(args.baseline) as code, tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp_name:
            assert code is not None
            timed = compare(Path(tmp_name), code, args.rounds)
        text += "\n" + report_comparison(timed, args.baseline, args.rounds)
        text = text.replace(
            f"--warm {args.warm}`",
            f"--warm {args.warm} --baseline {args.baseline} --rounds {args.rounds}`",
            1,
        )
    print(text)
    if not args.no_record:
        write_section("Fixed cost of one command", text)


if __name__ == "__main__":
    main()
