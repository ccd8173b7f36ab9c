"""The README's five-minute tour runs as written: every command, in order, on small inputs.

The commands are read from README.md (the first ``sh`` block under "## Five-minute tour")
and run as subprocesses in a temporary folder with the embedded defaults: MLflow on
``./mlflow.db``, the shared local Prefect server (its state in the temporary folder),
blocks in the command's own process for one small scene and on a private Ray for a batch.
Each command's time is printed (``pytest -rP`` shows it). :data:`TOUR` says, for each command,
which options are appended to keep it small (argparse: the last occurrence wins) and
which inputs the tour takes for granted the test writes first. A tour command missing
from :data:`TOUR`, or an entry no tour command uses, fails the test: the README and this
file change together.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio

from bench.loopback import free_port
from pipeline.demos.sample_scene import write_sample_scene
from tests._volume_cases import write_dicom_series, write_nifti

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HEADING = "## Five-minute tour"
PROGRAMS = {"gigaseg": ["-m", "flows.cli"], "mlflow": ["-m", "mlflow"]}
"""How each program of the tour is run: ``sys.executable`` with these arguments."""
NO_OPS = {". .venv/bin/activate", "source .venv/bin/activate"}
"""Commands about the user's shell, not the project: the test's interpreter is already the venv's."""
COMMAND_TIMEOUT_S = 300
SERVER_TIMEOUT_S = 90
SMALL_SCENE = 64
"""Side of the scenes the tour assumes exist (pixels)."""
VOLUME = 32
"""Side of the volume the tour assumes exists (voxels)."""


# --- what the tour assumes exists -------------------------------------------------------------


def _scene(folder: Path, seed: int) -> Path:
    """A small 4-band labelled scene like ``gigaseg sample-scene`` writes (the tour's models take 4 bands)."""
    return write_sample_scene(folder, SMALL_SCENE, seed=seed, name=f"scene{seed}").image


def _big_scene(tmp: Path) -> None:
    shutil.copy(_scene(tmp / "_scenes", 1), tmp / "big.tif")


def _incoming(tmp: Path) -> None:
    (tmp / "incoming").mkdir()
    shutil.copy(_scene(tmp / "_scenes", 2), tmp / "incoming" / "scene.tif")


def _many_scenes(tmp: Path) -> None:
    """``tiles/*.tif`` (two scenes) and ``@more.txt`` (a list of one more); the model is the tour's."""
    (tmp / "tiles").mkdir()
    for seed, name in ((3, "a"), (4, "b")):
        shutil.copy(_scene(tmp / "_scenes", seed), tmp / "tiles" / f"{name}.tif")
    shutil.copy(_scene(tmp / "_scenes", 5), tmp / "c.tif")
    (tmp / "more.txt").write_text("c.tif\n")


def _object_storage(tmp: Path) -> None:
    """``s3://imagery/scene.tif`` and an empty bucket ``results`` on the loopback S3 server."""
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for bucket in ("imagery", "results"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(_scene(tmp / "_scenes", 6)), "imagery", "scene.tif")


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume (z, y, x) with two bright spheres, and their labels."""
    z, y, x = np.indices((VOLUME,) * 3)
    inside = ((z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2 <= 36) | (
        (z - 22) ** 2 + (y - 18) ** 2 + (x - 16) ** 2 <= 36
    )
    image = 900.0 + 500.0 * inside + np.random.default_rng(0).normal(0, 50, inside.shape)
    return image, inside.astype(np.uint8)


def _nifti_volume(tmp: Path) -> None:
    image, labels = _volume()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    # NIfTI axes are (i, j, k): the store reads them as (z, y, x) = (k, j, i)
    write_nifti(tmp / "scan.nii.gz", image.T.astype(np.float32), affine)
    write_nifti(tmp / "seg.nii.gz", labels.T.copy(), affine)


def _dicom_series(tmp: Path) -> None:
    image, _ = _volume()
    write_dicom_series(tmp / "dicom_dir", image.astype(np.uint16), spacing=(1.5, 1.5, 1.5), intercept=0.0)


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """How the test runs one tour command."""

    small: tuple[str, ...] = ()
    """Options appended to make it small (``{port}``: a free loopback port)."""
    inputs: Callable[[Path], None] | None = None
    """Writes what the tour assumes exists, into the tour's folder, before the first command."""
    server: bool = False
    """The command serves until stopped: the test waits for ``GET /`` to answer 200, then stops it."""


TRAIN_2D = ("--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--tile", "64")
TRAIN_3D = ("--width", "4", "--tile", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1")

#: Each tour command, by its words up to its first option, and how the test runs it.
TOUR: dict[str, Step] = {
    "gigaseg sample-scene data/": Step(("--size", "128")),
    "gigaseg train data/sample.tif": Step(TRAIN_2D),
    "gigaseg promote landcover": Step(),
    "gigaseg segment data/sample.tif": Step(),
    # A watch's scan is a batch, and a batch runs on a private Ray by default (its start: 20-30 s on
    # a busy 2-core machine): the watch runs its blocks in this process, the many-scenes command keeps
    # its one pool on Ray, with one actor rather than one a core.
    "gigaseg watch incoming/": Step(("--once", "--workers", "0"), _incoming),
    "gigaseg segment big.tif": Step((), _big_scene),
    "gigaseg segment tiles/*.tif": Step(("--workers", "1"), _many_scenes),
    "gigaseg segment s3://imagery/scene.tif": Step((), _object_storage),
    "gigaseg models": Step(),
    "mlflow ui": Step(("--host", "127.0.0.1", "--port", "{port}", "--workers", "1"), server=True),
    "gigaseg train scan.nii.gz": Step(TRAIN_3D, _nifti_volume),
    "gigaseg segment scan.nii.gz": Step(),
    "gigaseg segment dicom_dir/": Step((), _dicom_series),
    "gigaseg demo-volume": Step(("--steps", "1", "--resolution", "2")),
}


# --- reading the tour -------------------------------------------------------------------------


def tour_commands(readme: str) -> list[list[str]]:
    """The commands of the first ``sh`` block after the tour's heading, as argument lists.

    Lines ending in ``\\`` are joined, ``#`` comments dropped, empty lines skipped;
    the no-ops of :data:`NO_OPS` are left out.
    """
    after = readme.split(f"\n{HEADING}\n", 1)
    assert len(after) == 2, f"README.md has no heading {HEADING!r}"
    block = re.search(r"^```sh\n(.*?)^```", after[1], re.S | re.M)
    assert block, f"no ```sh block after {HEADING!r}"
    commands = []
    for line in re.sub(r"\\\n", " ", block.group(1)).splitlines():
        words = shlex.split(line, comments=True)
        if words and " ".join(words) not in NO_OPS:
            commands.append(words)
    return commands


def key(words: list[str]) -> str:
    """A command's words up to its first option: its entry in :data:`TOUR`."""
    head = []
    for word in words:
        if word.startswith("-"):
            break
        head.append(word)
    return " ".join(head[:3])


def check_table(commands: list[list[str]]) -> None:
    """Every tour command runs a known program and has its :data:`TOUR` entry; no entry is stale."""
    keys = [key(words) for words in commands]
    unknown = [k for k in keys if k.split()[0] not in PROGRAMS]
    assert not unknown, f"tour commands of programs the test does not know (add to PROGRAMS): {unknown}"
    missing = [k for k in keys if k not in TOUR]
    assert not missing, f"add these tour commands to TOUR in {Path(__file__).name}: {missing}"
    stale = [k for k in TOUR if k not in keys]
    assert not stale, f"TOUR entries no tour command uses (remove them): {stale}"


# --- running it -------------------------------------------------------------------------------


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tour_env(tmp: Path) -> dict[str, str]:
    """The user's environment as a new user has it: no tracking, Prefect or gigaseg settings.

    The test session's own MLflow store, Prefect API and in-process blocks
    (``tests/conftest.py``) are dropped, so the commands use the embedded defaults;
    the shared Prefect server keeps its state in the tour's folder. The object-storage
    variables (``AWS_*``, from the ``s3_endpoint`` fixture) stay.
    """
    drop = ("MLFLOW_", "PREFECT_", "GIGASEG_", "RAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        GIGASEG_STATE_DIR=str(tmp / "_state"),
        PREFECT_HOME=str(tmp / "_prefect_home"),
        # `mlflow ui`: no background job runner (several processes of ~250 MB, unused by the tour)
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    return env


def _failure(words: list[str], result: subprocess.CompletedProcess) -> str:
    return (
        f"tour command failed with status {result.returncode}: {shlex.join(words)}\n"
        f"--- stdout (tail) ---\n{_tail(result.stdout)}\n--- stderr (tail) ---\n{_tail(result.stderr)}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server and every process it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


def _serve(argv: list[str], words: list[str], port: int, tmp: Path, env: dict[str, str]) -> None:
    """Start a server command, wait until ``GET /`` answers 200, stop it."""
    log_path = tmp / f"_server_{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + SERVER_TIMEOUT_S
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"tour server did not answer on port {port}: {shlex.join(words)}\n"
                        f"--- log (tail) ---\n{_tail(log_path.read_text())}"
                    )
                time.sleep(0.5)
        finally:
            _stop(proc)


def _run(words: list[str], step: Step, tmp: Path, env: dict[str, str]) -> None:
    port = free_port()
    words = [*words, *(w.format(port=port) for w in step.small)]
    argv = [sys.executable, *PROGRAMS[words[0]], *words[1:]]
    if step.server:
        _serve(argv, words, port, tmp, env)
        return
    result = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, _failure(words, result)


def _stop_prefect_server(tmp: Path, env: dict[str, str]) -> None:
    """Stop the shared Prefect server the tour's commands started (it would idle for 30 minutes)."""
    subprocess.run(
        [sys.executable, *PROGRAMS["gigaseg"], "server", "stop", "--force"],
        cwd=tmp,
        env=env,
        capture_output=True,
        timeout=60,
    )


# --- what the tour promises -------------------------------------------------------------------


def _check_outputs(tmp: Path) -> None:
    with rasterio.open(tmp / "data" / "sample.tif") as src, rasterio.open(tmp / "classes.tif") as dst:
        assert (dst.height, dst.width) == (src.height, src.width)
        assert dst.crs == src.crs and dst.transform == src.transform
    assert (tmp / "classes.qml").is_file()
    assert (tmp / "unet.safetensors").is_file() and (tmp / "unet3d.safetensors").is_file()
    assert (tmp / "smoke.tif").is_file()
    assert list((tmp / "segmented").glob("scene*.tif")), sorted((tmp / "segmented").iterdir())
    assert {p.name for p in (tmp / "out").glob("*.tif")} == {"a.tif", "b.tif", "c.tif"}
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert s3.head_object(Bucket="results", Key="scene.tif")["ContentLength"] > 0
    assert (tmp / "labels.nii.gz").is_file()
    assert (tmp / "labels.zarr").is_dir()
    assert (tmp / "demo_volume" / "mni152_labels.nii.gz").is_file()
    assert (tmp / "mlflow.db").is_file(), "the tour's runs go to ./mlflow.db"


# --- the tests --------------------------------------------------------------------------------


def test_every_tour_command_has_an_entry_and_every_entry_a_command():
    check_table(tour_commands(README.read_text()))


def test_readme_tour_parser_joins_lines_and_drops_comments():
    readme = (
        f"intro\n{HEADING}\n\n```sh\n. .venv/bin/activate\n# a comment\n"
        "gigaseg a 'x y' \\\n    --b 1   # trailing\n\n"
        "   # indented comment\nmlflow ui\n```\n\n```sh\ngigaseg later\n```\n"
    )
    assert tour_commands(readme) == [["gigaseg", "a", "x y", "--b", "1"], ["mlflow", "ui"]]
    assert key(["gigaseg", "segment", "big.tif", "-m", "x"]) == "gigaseg segment big.tif"
    assert key(["gigaseg", "models"]) == "gigaseg models"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_readme_tour_runs_in_order(tmp_path, s3_endpoint):
    commands = tour_commands(README.read_text())
    check_table(commands)
    env = _tour_env(tmp_path)
    for words in commands:
        step = TOUR[key(words)]
        if step.inputs is not None:
            step.inputs(tmp_path)
    shutil.rmtree(tmp_path / "_scenes", ignore_errors=True)
    try:
        for words in commands:
            t0 = time.perf_counter()
            _run(words, TOUR[key(words)], tmp_path, env)
            print(f"{time.perf_counter() - t0:6.1f} s  {shlex.join(words)}", flush=True)
    finally:
        _stop_prefect_server(tmp_path, env)
    _check_outputs(tmp_path)
