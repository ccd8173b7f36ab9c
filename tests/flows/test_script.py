"""How a command's process loads its modules (flows/script.py): the cyclic garbage collector
is paused while they load, and what they made is frozen out of its later passes."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.script import loading_without_collecting

ROOT = Path(__file__).resolve().parents[2]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of the collector's passes while the test runs; frozen objects let go after."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.unfreeze()


def test_nothing_is_collected_while_loading_and_what_was_made_is_frozen(collections: list[int]) -> None:
    assert gc.isenabled()
    with loading_without_collecting():
        made = [_Cycle() for _ in range(20 * gc.get_threshold()[0])]
    assert collections == [], "the collector ran while loading"
    assert gc.isenabled()
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(o) in tracked for o in made[:: len(made) // 10]), "loaded objects not frozen"
    assert gc.get_freeze_count() >= len(made)


def test_a_collector_paused_by_the_caller_stays_paused(collections: list[int]) -> None:
    gc.disable()
    try:
        with loading_without_collecting():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_is_back_on_when_loading_fails(collections: list[int]) -> None:
    with pytest.raises(ImportError), loading_without_collecting():
        import gigaseg_no_such_module  # noqa: F401
    assert gc.isenabled()


def test_the_segment_command_loads_torch_and_prefect_without_a_full_collection(tmp_path: Path) -> None:
    """The whole command up to its flow: imports without the collector's full passes (several
    without the pause), its flow module frozen, the collector on again for the run."""
    probe = textwrap.dedent(
        f"""
        import gc, sys
        full = []
        def full_pass(phase, info):
            if phase == "start" and info["generation"] == 2:
                full.append(1)
        gc.callbacks.append(full_pass)
        from flows.cli import main
        status = main(["segment", {str(tmp_path / "missing.tif")!r}, "-m", "arch:conv1x1", "-o",
                       {str(tmp_path / "out.tif")!r}, "--no-track", "--workers", "0"])
        import flows.segment_scene, torch
        tracked = {{id(o) for o in gc.get_objects()}}
        print(status, len(full), id(vars(flows.segment_scene)) in tracked, id(vars(torch)) in tracked,
              gc.isenabled())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no such file" in run.stderr
    status, full_passes, flow_tracked, torch_tracked, enabled = run.stdout.split()
    assert status == "2"
    assert full_passes == "0", f"{full_passes} full collections while the command loaded"
    assert (flow_tracked, torch_tracked, enabled) == ("False", "False", "True")
