"""What a row's child process measures of itself: its peak RSS, its process tree's, the GPU's busy share."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import threading

import numpy as np


def peak_rss() -> int:
    """Peak RSS of this process since it started (bytes): ``VmHWM`` of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``exec``, so a child
    started by a parent holding 800 MiB would report at least 800 MiB whatever it used.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no procfs


class GpuSampler:
    """Fraction of wall time the GPU is busy (``nvidia-smi`` utilisation, sampled); None off CUDA."""

    def __init__(self, device: str):
        self.samples: list[float] = []
        self.on = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]) / 100.0)

    def __enter__(self) -> GpuSampler:
        if self.on:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


class TreeRss:
    """Peak of the RSS summed over this process and all its descendants, sampled every 0.1 s.

    For the Ray row, whose work runs in the cluster's processes (raylet, GCS, workers),
    not in this one. Shared pages (libraries, Ray's object store) count once per
    process, so the sum is an upper bound.
    """

    def __init__(self, on: bool = True) -> None:
        import psutil

        self.on = on
        self.peak = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # exited between the listing and the reading
                total += proc.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def __enter__(self) -> TreeRss:
        if self.on:
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self._stop.set()
            self._thread.join()
            self.sample()
