"""The heap allocator a gigaseg process runs on (pipeline/execution/heap_allocator.py): the
``gigaseg`` command starts over once on TCMalloc where it is installed, before its imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.execution.heap_allocator import (
    QUIET_LARGE_ALLOCATIONS,
    SETTING,
    allocator_environment,
    allocator_in_use,
    tcmalloc_library,
)
from tests.conftest import skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]

# `gigaseg models unet` as the console script runs it (main() with no arguments), or called from
# Python (main(ARGS)); then the process's id and allocator, once per start of the program.
PROBE = textwrap.dedent(
    """
    import os, sys
    print("START", os.getpid(), flush=True)
    sys.argv = ["gigaseg", "models", "unet"]
    from flows.cli import main
    from pipeline.execution.heap_allocator import allocator_in_use
    status = main() if sys.argv_mode == "entry" else main(["models", "unet"])
    print("END", os.getpid(), allocator_in_use(), status, flush=True)
    """
)


def _probe(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = PROBE.replace("sys.argv_mode", repr(mode))
    environment = {k: v for k, v in os.environ.items() if k not in (SETTING, "LD_PRELOAD")}
    environment.update(PYTHONPATH=str(ROOT), **env)
    command = [sys.executable, "-c", code]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tcmalloc() -> str:
    library = tcmalloc_library()
    if library is None:
        skip_unless_ci("no TCMalloc installed (Debian / Ubuntu: apt install libtcmalloc-minimal4)")
    assert library is not None
    return library


def test_the_command_starts_over_once_on_tcmalloc_in_the_same_process(tcmalloc: str) -> None:
    run = _probe("entry")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    starts = [line.split()[1] for line in lines if line.startswith("START")]
    assert len(starts) == 2 and starts[0] == starts[1], "one exec, same process id"
    assert sum(line.startswith("unet ") for line in lines) == 1, "the command ran once"
    assert lines[-1] == f"END {starts[0]} tcmalloc 0"


def test_a_flow_script_starts_over_once_on_tcmalloc(tcmalloc: str) -> None:
    """``python flows/promote_model.py …`` (what ``ray submit`` runs), here through runpy with ``--help``."""
    code = textwrap.dedent(
        """
        import atexit, os, runpy, sys
        print("START", os.getpid(), flush=True)
        from pipeline.execution.heap_allocator import allocator_in_use
        atexit.register(lambda: print("END", os.getpid(), allocator_in_use(), flush=True))
        sys.argv = ["flows/promote_model.py", "--help"]
        runpy.run_path("flows/promote_model.py", run_name="__main__")
        """
    )
    environment = {k: v for k, v in os.environ.items() if k not in (SETTING, "LD_PRELOAD")}
    environment["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    starts = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("START")]
    assert len(starts) == 2 and starts[0] == starts[1], "one exec, same process id"
    assert "usage: gigaseg promote" in run.stdout
    assert run.stdout.splitlines()[-1] == f"END {starts[0]} tcmalloc"


def test_gigaseg_allocator_system_keeps_the_system_allocator(tcmalloc: str) -> None:
    run = _probe("entry", **{SETTING: "system"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert [line.split()[0] for line in run.stdout.splitlines()].count("START") == 1
    assert run.stdout.splitlines()[-1].split()[2] == "system"


def test_main_called_from_python_never_starts_the_process_over(tcmalloc: str) -> None:
    run = _probe("called")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("START") == 1
    assert run.stdout.splitlines()[-1].split()[2] == "system"


def test_a_bad_gigaseg_allocator_is_one_line_and_status_2() -> None:
    run = _probe("entry", **{SETTING: "jemalloc"})
    assert run.returncode == 2
    assert run.stderr.strip() == "gigaseg: GIGASEG_ALLOCATOR='jemalloc': expected one of tcmalloc, system"


def test_a_bad_gigaseg_allocator_is_refused_where_no_tcmalloc_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.execution import heap_allocator

    monkeypatch.setattr(heap_allocator, "tcmalloc_library", lambda: None)
    monkeypatch.setenv(SETTING, "jemalloc")
    with pytest.raises(ValueError, match=r"^GIGASEG_ALLOCATOR='jemalloc': expected one of tcmalloc, system$"):
        allocator_environment()


def test_a_preloaded_library_is_kept_after_tcmalloc(tcmalloc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/opt/x/libtrace.so:/opt/y/libz.so")
    assert allocator_environment() == {
        "LD_PRELOAD": f"{tcmalloc} /opt/x/libtrace.so /opt/y/libz.so",
        **QUIET_LARGE_ALLOCATIONS,
    }


def test_a_users_own_preloaded_allocator_is_left_alone(
    tcmalloc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator_environment() == {}


def test_nothing_is_asked_for_where_the_system_allocator_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "System")
    assert allocator_environment() == {}


def test_this_test_process_runs_on_the_allocator_it_started_with() -> None:
    expected = "tcmalloc" if "libtcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"
    assert allocator_in_use() == expected
