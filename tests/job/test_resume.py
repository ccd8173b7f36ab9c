"""Idempotent and resumable: a run killed mid-way and started again skips done blocks
and writes the same bytes as an undisturbed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import rasterio

from tests._stop_at_state import gigaseg_stopping_after, wait_until_stopped
from tests._varying_models import label_spread
from tests.conftest import noise_scene_array, write_raster

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "flows.cli"]


def _args(scene: Path, model: Path, out: Path, work: Path) -> list[str]:
    """``gigaseg segment``'s arguments: labels and probabilities, 64 blocks of 128², in this process."""
    return [
        "segment",
        str(scene),
        "-m",
        str(model),
        "-o",
        str(out),
        "--tile",
        "64",
        "--block",
        "128",
        "--chunk",
        "128",
        "--work-dir",
        str(work),
        "--probabilities",
        str(out.with_suffix(".probs.tif")),
        "--threads",
        "1",
    ]


def _done_chunks(work: Path) -> int:
    """Blocks marked done; zarr writes each chunk to a ``.partial`` file first, which does not count."""
    done = work / "output.zarr" / "done" / "c"
    if not done.exists():
        return 0
    return sum(1 for p in done.rglob("*") if p.is_file() and not p.name.endswith(".partial"))


def test_killed_run_resumes_and_matches_undisturbed_run(tmp_path, tiny_checkpoint):
    scene = write_raster(tmp_path / "scene.tif", noise_scene_array((1024, 1024), seed=7))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    reference = tmp_path / "reference.tif"
    subprocess.run(
        [*CLI, *_args(scene, tiny_checkpoint, reference, tmp_path / "w0")],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )

    out, work = tmp_path / "resumed.tif", tmp_path / "w1"
    # Killed at a state, not a time: the run freezes itself once its third block is written.
    proc = gigaseg_stopping_after(3, _args(scene, tiny_checkpoint, out, work), env, ROOT)
    wait_until_stopped(proc, 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _done_chunks(work)
    assert killed_at == 3, "one block is written at a time in process: exactly three are done"
    assert not out.exists(), "a killed run must not leave a finished-looking output"

    result = subprocess.run(
        [*CLI, *_args(scene, tiny_checkpoint, out, work)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    resumed = int(result.stderr.split("block(s) resumed")[0].rsplit(", ", 1)[1])
    assert resumed == killed_at
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".probs.tif").read_bytes() == reference.with_suffix(".probs.tif").read_bytes()
    with rasterio.open(reference) as src:  # the bytes compared are a map that varies, not one class
        label_spread(src.read(1)).check(min_classes=4, min_share=0.15)
