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
    """Fraction of wall time the GPU is busy (its utilisation, sampled every 0.1 s); None off CUDA.

    NVML through ``torch.cuda.utilization`` (the ``nvidia-ml-py`` package) where it
    answers: a library call, no process per sample. Else one ``nvidia-smi`` process
    that prints a sample every 100 ms until it is stopped.
    """

    PERIOD_S = 0.1

    def __init__(self, device: str):
        self.samples: list[float] = []
        self.device = device
        self.on = device.startswith("cuda")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._smi: subprocess.Popen[str] | None = None

    def _nvml(self) -> bool:
        """True when NVML answers for this device."""
        import torch

        try:
            torch.cuda.utilization(self.device)
        except Exception:  # no nvidia-ml-py, or no NVML behind it
            return False
        return True

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self.PERIOD_S):
            self.samples.append(torch.cuda.utilization(self.device) / 100.0)

    def _run_smi(self) -> None:
        assert self._smi is not None and self._smi.stdout is not None
        for line in self._smi.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line) / 100.0)

    def __enter__(self) -> GpuSampler:
        if not self.on:
            return self
        if not self._nvml():
            smi = shutil.which("nvidia-smi")
            if smi is None:
                self.on = False
                return self
            index = self.device.partition(":")[2] or "0"
            self._smi = subprocess.Popen(
                [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", index,
                 "-lms", str(int(self.PERIOD_S * 1000))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            self._thread = threading.Thread(target=self._run_smi, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

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
