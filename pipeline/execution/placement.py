"""Where a job's blocks run by default: on Ray actors, or in this process (pure: no Ray here).

Ray pays for itself only when it runs blocks side by side that this process could
not: several GPUs (one actor each), a cluster, or a scene so large that its start
(a local Ray and the actors' model load, several seconds: ``python -m
bench.fixed_cost_bench``) is a small part of the run. On one CPU machine the
in-process engine already uses every core (torch threads + an I/O thread), and two
1-thread actors only matched it (the Ray rows of bench/RESULTS.md), so a small
scene on Ray is the same work plus Ray's start.
"""

from __future__ import annotations

from typing import NamedTuple

RAY_MIN_PIXELS = 64_000_000
"""Pending pixels (voxels) from which a run on one machine uses a local Ray without being asked.

Ray's fixed cost is a local Ray's start plus the actors' start and model load: 4.4 s +
4.9 s to the first block on a quiet 2-core machine (bench/RESULTS.md, "Ray
execution"), 17 s on a loaded one (``python -m bench.fixed_cost_bench``). What it can
win on one CPU machine is small (two 1-thread actors matched the in-process engine on
2 cores: 1.01×); on many cores it is the gap between torch's intra-op scaling and one
process per core. At 64 Mpx a small U-Net (w16 d3) runs ~400 s in process on 2 cores,
so the start costs 2–4 % there and less on larger machines, and a long run gets the
pool's restarts of lost workers; below it the start is most of a small job's time."""


class Placement(NamedTuple):
    """The decision and the reason for it (for logs and tests)."""

    on_ray: bool
    reason: str


def place_blocks(
    workers: int | None,
    address: str | None,
    gpus: int,
    pending_pixels: int,
    pending_blocks: int,
    device: str = "auto",
    min_pixels: int = RAY_MIN_PIXELS,
    per_gpu: int = 1,
) -> Placement:
    """Whether a job's pending blocks run on Ray, from what the run was told and what it has.

    ``workers`` given decides alone (0: this process, N: N Ray actors). Otherwise a
    Ray address (``--ray-address`` / ``RAY_ADDRESS``) joins that cluster; several
    GPUs usable by ``device`` take one actor each (``per_gpu`` each: with 2 or more, one
    GPU too); a scene of at least
    ``min_pixels`` pending pixels uses a local Ray; anything else — one block, a
    small scene, one GPU — runs here, with no Ray to start.

    >>> place_blocks(None, None, gpus=0, pending_pixels=1_000_000, pending_blocks=4)
    Placement(on_ray=False, reason='small job: 1.0 Mpx pending (< 64 Mpx), no cluster, <2 GPUs')
    >>> place_blocks(None, None, gpus=0, pending_pixels=100_000_000, pending_blocks=100).on_ray
    True
    >>> place_blocks(None, None, gpus=2, pending_pixels=1_000_000, pending_blocks=4).reason
    '2 GPUs: one actor each'
    >>> place_blocks(None, None, gpus=1, pending_pixels=1_000_000, pending_blocks=4, per_gpu=4).reason
    '1 GPU(s) × 4 actors each'
    >>> place_blocks(None, "ray://head:10001", gpus=0, pending_pixels=1, pending_blocks=1).on_ray
    True
    >>> place_blocks(2, None, gpus=0, pending_pixels=1, pending_blocks=1).on_ray
    True
    >>> place_blocks(0, "ray://head:10001", gpus=4, pending_pixels=10**9, pending_blocks=99).on_ray
    False
    """
    if workers is not None:
        if workers == 0:
            return Placement(False, "--workers 0: in this process")
        return Placement(True, f"--workers {workers}: Ray actors")
    if address:
        return Placement(True, f"Ray cluster at {address}")
    if pending_blocks < 2:
        return Placement(False, f"{pending_blocks} block pending: nothing to run side by side")
    if per_gpu > 1 and gpus >= 1 and device in ("auto", "cuda"):
        return Placement(True, f"{gpus} GPU(s) × {per_gpu} actors each")
    if gpus >= 2 and device in ("auto", "cuda"):
        return Placement(True, f"{gpus} GPUs: one actor each")
    mpx, limit = pending_pixels / 1e6, min_pixels / 1e6
    if pending_pixels >= min_pixels:
        return Placement(True, f"large job: {mpx:.0f} Mpx pending (≥ {limit:.0f} Mpx)")
    return Placement(False, f"small job: {mpx:.1f} Mpx pending (< {limit:.0f} Mpx), no cluster, <2 GPUs")


__all__ = ["RAY_MIN_PIXELS", "Placement", "place_blocks"]
