"""How long idle OpenMP threads spin: bounded before torch loads, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.execution.openmp_spinning import SPIN_COUNT, USER_SETTINGS, bound_openmp_spinning

_PROBE = (
    "import os, sys, flows\n"
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
)


def _after_importing_flows(**user: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**env, **user}, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_importing_flows_bounds_the_spin_before_torch_loads():
    assert _after_importing_flows() == [str(SPIN_COUNT), "None", "False"]


def test_a_users_wait_policy_or_spin_count_wins():
    assert _after_importing_flows(OMP_WAIT_POLICY="PASSIVE") == ["None", "PASSIVE", "False"]
    assert _after_importing_flows(GOMP_SPINCOUNT="5") == ["5", "None", "False"]


def test_bounding_after_torch_loaded_says_it_reaches_only_later_processes(monkeypatch):
    import torch  # noqa: F401  (loaded, as in this test process anyway)

    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert bound_openmp_spinning() is False
    assert os.environ["GOMP_SPINCOUNT"] == str(SPIN_COUNT)
