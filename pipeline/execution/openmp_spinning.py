"""How long torch's idle OpenMP threads spin before they sleep: briefly, leaving the cores to the pipeline.

After each parallel op, libgomp's worker threads (torch's intra-op threads on CPU)
spin waiting for the next one, by default for about 300,000 rounds, which is
milliseconds. Within a forward pass that saves a wake-up per op; between forward
passes the pipeline's own work runs (normalising, blending, encoding chunks,
exporting) and the spinning threads take the cores it needs. A short spin
(:data:`SPIN_COUNT` rounds) keeps a forward's op after op as fast and lets the
threads sleep between batches; no spin at all (``OMP_WAIT_POLICY=PASSIVE``)
slows forwards of many small ops. Measured in bench/RESULTS.md, "Cost per pixel".

libgomp reads its settings once, when torch loads it: :func:`bound_openmp_spinning`
must run before ``import torch`` to apply to this process (the ``flows`` package
calls it when imported, before any flow imports torch). Processes started later
inherit it, and Ray's block workers get :func:`openmp_environment` explicitly.
A user's own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` wins.

>>> sorted(openmp_environment()) in (["GOMP_SPINCOUNT"], ["OMP_WAIT_POLICY"], list(USER_SETTINGS))
True
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = 10_000
"""libgomp spin rounds before an idle thread sleeps (``GOMP_SPINCOUNT``)."""

USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
"""The variables by which a user chooses how OpenMP threads wait; any of them set, ours is not."""


def openmp_environment() -> dict[str, str]:
    """The variables that say how OpenMP threads wait: the user's where set, else our spin count."""
    chosen = {k: os.environ[k] for k in USER_SETTINGS if os.environ.get(k)}
    return chosen or {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def bound_openmp_spinning() -> bool:
    """Set :func:`openmp_environment` in this process; returns whether torch loads it here.

    False when torch was already imported: the setting then reaches only the
    processes this one starts.
    """
    os.environ.update(openmp_environment())
    return "torch" not in sys.modules
