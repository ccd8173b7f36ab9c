"""Fixed outputs: SHA-256 of the pixel arrays of a set of runs, to show a refactor changed nothing.

Each case runs the ``gigaseg`` command (as a user would) on data made here with fixed
seeds, then hashes the output's pixels (not the file, whose metadata may carry dates):

- ``raster_nodata``: a generated 4-band scene with a nodata strip, an untrained U-Net
  (``arch:unet``, seed 0), gaussian blending;
- ``blend_crop``: the same with ``--blend crop``;
- ``crf_local``: the same with ``--crf local``;
- ``volume``: a generated NIfTI volume through an untrained 3D U-Net;
- ``resumed``: a run killed after its first block and started again;
- ``trained``: a small U-Net trained by ``gigaseg train`` (fixed seed, a few steps),
  then the sample scene segmented with it (the checkpoint's tensors are hashed too).

Float kernels differ between CPUs and torch builds, so the hashes are machine-specific:
record them before a change and check them after, on the same machine::

    python -m bench.fixed_outputs --record bench/out/fixed_outputs.json
    python -m bench.fixed_outputs --check bench/out/fixed_outputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SCENE_SIZE = 768
GIGASEG = [str(Path(sys.executable).with_name("gigaseg"))]


def _gigaseg(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GIGASEG, *map(str, args)], check=check, capture_output=True, text=True, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIGASEG_WORKERS"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _raster_pixels(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def _volume_pixels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _segment(scene: Path, out: Path, *extra: str | Path) -> str:
    _gigaseg("segment", scene, "-m", "arch:unet", "--num-classes", "5", "--seed", "0", "--tile", "128",
             "--block", "512", "--chunk", "256", "-o", out, "--quiet", "--no-track", "--threads", "1",
             *extra)  # fmt: skip
    return _digest(_raster_pixels(out))


def _volume(work: Path) -> str:
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, size=(48, 40, 36)).astype(np.float32)
    affine = np.diag([1.5, 1.0, 1.2, 1.0])
    affine[:3, 3] = (-10, 5, 3)
    nib.save(nib.Nifti1Image(data, affine), str(work / "scan.nii.gz"))
    out = work / "volume_labels.nii.gz"
    _gigaseg("segment", work / "scan.nii.gz", "-m", "arch:unet3d", "--num-classes", "3", "--in-channels",
             "1", "--seed", "0", "--tile", "32", "--volume-block", "32", "--volume-chunk", "16", "-o", out,
             "--quiet", "--no-track", "--threads", "1")  # fmt: skip
    return _digest(_volume_pixels(out))


def _resumed(scene: Path, work: Path) -> str:
    """Kill a run once its first block is done, run it again, hash the result."""
    out = work / "resumed.tif"
    command = [*GIGASEG, "segment", str(scene), "-m", "arch:unet", "--num-classes", "5", "--seed", "0",
               "--tile", "128", "--block", "256", "--chunk", "256", "-o", str(out), "--quiet", "--no-track",
               "--threads", "1", "--work-dir", str(work / "resume-work")]  # fmt: skip
    proc = subprocess.Popen(command, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if _blocks_done(work / "resume-work") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    subprocess.run(command, check=True, env=_env())
    return _digest(_raster_pixels(out))


def _blocks_done(work_dir: Path) -> int:
    import zarr

    for done in work_dir.rglob("done/zarr.json"):
        try:
            return int(np.asarray(zarr.open_array(str(done.parent), mode="r")[...]).sum())
        except Exception:  # the store may be half-created while we look
            return 0
    return 0


def _trained(scene: Path, labels: Path, work: Path) -> str:
    checkpoint = work / "trained.safetensors"
    _gigaseg("train", scene, "--labels", labels, "--arch", "unet", "--width", "8", "--depth", "2",
             "--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4", "--tile", "64", "--seed", "0",
             "-o", checkpoint, "--quiet", "--work-dir", work / "train-work")  # fmt: skip
    from safetensors.numpy import load_file

    tensors = load_file(str(checkpoint))
    out = work / "trained_classes.tif"
    _gigaseg("segment", scene, "-m", checkpoint, "-o", out, "--block", "512", "--chunk", "256", "--quiet",
             "--no-track", "--threads", "1")  # fmt: skip
    return _digest(*(tensors[k] for k in sorted(tensors)), _raster_pixels(out))


def compute(work: Path, log: Callable[[str], None], only: set[str] | None = None) -> dict[str, str]:
    """Run the cases (every one, or those in ``only``) in ``work`` and return ``{case: sha256}``."""
    _gigaseg("sample-scene", work, "--size", str(SCENE_SIZE), "--seed", "3", "--quiet")
    scene, labels = work / "sample.tif", work / "sample_labels.tif"
    cases: dict[str, Callable[[], str]] = {
        "raster_nodata": lambda: _segment(scene, work / "gaussian.tif"),
        "blend_crop": lambda: _segment(scene, work / "crop.tif", "--blend", "crop"),
        "crf_local": lambda: _segment(scene, work / "crf.tif", "--crf", "local"),
        "volume": lambda: _volume(work),
        "resumed": lambda: _resumed(scene, work),
        "trained": lambda: _trained(scene, labels, work),
    }
    hashes = {}
    for name, case in cases.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        hashes[name] = case()
        log(f"{name}: {hashes[name][:16]}… ({time.perf_counter() - t0:.1f} s)")
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", type=Path, help="write the hashes to this JSON file")
    what.add_argument("--check", type=Path, help="compare with the hashes in this JSON file")
    parser.add_argument("--cases", help="only these cases, comma-separated (with --check)")
    args = parser.parse_args(argv)
    only = set(args.cases.split(",")) if args.cases else None
    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="gigaseg-fixed-"))
    try:
        with prefect_test_harness(server_startup_timeout=300):
            from prefect.settings import PREFECT_API_URL

            os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
            hashes = compute(work, print, only)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(hashes, indent=2) + "\n")
        print(f"recorded {len(hashes)} hashes in {args.record}")
        return 0
    expected = json.loads(args.check.read_text())
    differ = sorted(k for k in expected if (not only or k in only) and hashes.get(k) != expected[k])
    print("identical" if not differ else f"DIFFERENT: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
