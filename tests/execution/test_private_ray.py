"""A run owns only the Ray it started (DESIGN.md, invariant 10).

Two ``gigaseg segment`` commands on one machine, the second started while the first
one's Ray is up: each starts a private Ray of its own (never joins the other's, which
goes down when the other command ends), both finish with the in-process output, and
no Ray process outlives them. Their Ray lives under a temporary folder of this test
(``RAY_TMPDIR``), so its processes are told apart from any other Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import write_raster

GIGASEG = Path(sys.executable).with_name("gigaseg")
RUN = ["-m", "arch:unet", "--num-classes", "2", "--tile", "64", "--threads", "1", "--no-track", "--quiet"]
TIMEOUT_S = 240


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A Ray temp folder for the commands alone (short: Ray's socket paths have a length limit)."""
    folder = Path(tempfile.mkdtemp(prefix="gsp", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _ray_processes(ray_tmpdir: Path) -> list[int]:
    """Processes of a Ray kept under ``ray_tmpdir`` (their command lines name it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(ray_tmpdir).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _segment(scene: Path, out: Path, workers: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(GIGASEG), "segment", str(scene), "-o", str(out), "--workers", str(workers), *RUN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finished(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, output[-3000:]
    return output


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.skipif(sys.platform != "linux", reason="finds Ray's processes in /proc")
def test_two_commands_on_one_machine_each_run_on_a_private_ray_and_stop_it(tmp_path, ray_tmpdir):
    rng = np.random.default_rng(5)
    scene = write_raster(tmp_path / "scene.tif", (rng.random((3, 96, 96)) * 3000 + 100).astype(np.uint16))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmpdir)

    reference = _segment(scene, tmp_path / "in_process.tif", 0, env)
    first = _segment(scene, tmp_path / "first.tif", 1, env)
    try:
        assert _wait_until(lambda: _ray_processes(ray_tmpdir), 120), "the first command started no Ray"
        second = _segment(scene, tmp_path / "second.tif", 1, env)
        try:
            for proc in (first, second, reference):
                _finished(proc)
        finally:
            second.kill()
    finally:
        first.kill()
        reference.kill()

    assert _wait_until(lambda: not _ray_processes(ray_tmpdir), 30), "a Ray outlived its command"
    expected = _labels(tmp_path / "in_process.tif")
    assert (_labels(tmp_path / "first.tif") == expected).all()
    assert (_labels(tmp_path / "second.tif") == expected).all()
