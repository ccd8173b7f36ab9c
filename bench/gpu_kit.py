"""The Python packages a lent GPU machine lacks for gigaseg's GPU benches, as wheels to carry there.

The GPU machines this project is sometimes lent reach no package index, and their
image holds torch, numpy, scipy, scikit-image and the like (:data:`DEVICE_IMAGE`), not
the raster stack. This finds every distribution the GPU benches import (a probe in
a child process runs a small job stage by stage and MONAI's sliding window, and
imports the benches' rows) and records what gigaseg's and the benches' own modules
import. Those distributions and their declared requirements for Python 3.12 (not
what they import only because it is installed here, as MONAI does MLflow), less what
the image holds, are downloaded at this environment's versions as CPython 3.12
x86-64 wheels into ``.gpu-kit/`` (git-ignored). ``bench/gpu_check.sh`` installs them there and runs
the benches; docs/operations.md ("Measuring on a GPU machine") gives the two steps.

Run: ``python -m bench.gpu_kit [--dest .gpu-kit]`` (``--list``: print the kit, download nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from bench.baseline import ROOT, python_path

DEVICE_IMAGE = frozenset(
    {
        "absl-py",
        "accelerate",
        "aiofiles",
        "aiohappyeyeballs",
        "aiohttp",
        "aiosignal",
        "annotated-doc",
        "anyio",
        "attrs",
        "botorch",
        "build",
        "certifi",
        "charset-normalizer",
        "chex",
        "click",
        "cloudpickle",
        "cmake",
        "colorama",
        "contourpy",
        "coverage",
        "cuda-bindings",
        "cuda-core",
        "cuda-pathfinder",
        "cuda-toolkit",
        "cupy-cuda13x",
        "cycler",
        "cython",
        "diffrax",
        "e3nn",
        "einops",
        "equinox",
        "etils",
        "execnet",
        "filelock",
        "flatbuffers",
        "flax",
        "fonttools",
        "formulaic",
        "frozenlist",
        "fsspec",
        "gpytorch",
        "grpcio",
        "h11",
        "h5py",
        "hf-xet",
        "httpcore",
        "httpx",
        "huggingface-hub",
        "humanize",
        "hypothesis",
        "idna",
        "imageio",
        "iniconfig",
        "interface-meta",
        "jax",
        "jax-cuda13-pjrt",
        "jax-cuda13-plugin",
        "jaxlib",
        "jaxtyping",
        "jinja2",
        "joblib",
        "kiwisolver",
        "lazy-loader",
        "lightning",
        "lightning-utilities",
        "linear-operator",
        "lineax",
        "llvmlite",
        "lxml",
        "markdown",
        "markdown-it-py",
        "markupsafe",
        "matplotlib",
        "mdurl",
        "meson",
        "ml-dtypes",
        "mpi4py",
        "mpmath",
        "msgpack",
        "multidict",
        "multipledispatch",
        "mypy-extensions",
        "nanobind",
        "narwhals",
        "networkx",
        "ninja",
        "numba",
        "numba-cuda",
        "numpy",
        "numpyro",
        "nvidia-cublas",
        "nvidia-cuda-cupti",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-runtime",
        "nvidia-cudnn-cu13",
        "nvidia-cufft",
        "nvidia-cufile",
        "nvidia-curand",
        "nvidia-cusolver",
        "nvidia-cusparse",
        "nvidia-cusparselt-cu13",
        "nvidia-ml-py",
        "nvidia-nccl-cu13",
        "nvidia-nvjitlink",
        "nvidia-nvshmem-cu13",
        "nvidia-nvtx",
        "onnx",
        "onnx-ir",
        "onnxruntime",
        "onnxscript",
        "opencv-python-headless",
        "optax",
        "opt-einsum",
        "opt-einsum-fx",
        "optimistix",
        "orbax-checkpoint",
        "packaging",
        "pandas",
        "pathspec",
        "patsy",
        "peft",
        "pillow",
        "pip",
        "pluggy",
        "portalocker",
        "prometheus-client",
        "propcache",
        "protobuf",
        "psutil",
        "pyarrow",
        "pybind11",
        "py-cpuinfo",
        "pygments",
        "pyparsing",
        "pyproject-hooks",
        "pyre-extensions",
        "pytest",
        "pytest-benchmark",
        "pytest-cov",
        "pytest-mock",
        "pytest-timeout",
        "pytest-xdist",
        "python-dateutil",
        "pytorch-lightning",
        "pyyaml",
        "regex",
        "requests",
        "rich",
        "sacrebleu",
        "safetensors",
        "scikit-build-core",
        "scikit-image",
        "scikit-learn",
        "scipy",
        "seaborn",
        "sentencepiece",
        "sentence-transformers",
        "setuptools",
        "shellingham",
        "simplejson",
        "six",
        "sortedcontainers",
        "statsmodels",
        "sympy",
        "tabulate",
        "tensorboard",
        "tensorboard-data-server",
        "tensorstore",
        "threadpoolctl",
        "tifffile",
        "tiktoken",
        "timm",
        "tokenizers",
        "toolz",
        "torch",
        "torchaudio",
        "torchdiffeq",
        "torch-geometric",
        "torchmetrics",
        "torchvision",
        "tqdm",
        "transformers",
        "treescope",
        "triton",
        "typer",
        "typing-extensions",
        "typing-inspect",
        "urllib3",
        "uvloop",
        "wadler-lindig",
        "werkzeug",
        "wheel",
        "wrapt",
        "xarray",
        "xxhash",
        "yarl",
        "zipp",
    }
)
"""The image's packages, as the device tool's notes list them (2026-11-17): they are never carried."""


PYTHON = "3.12"
"""The GPU machines' Python."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MAX_BYTES = 56 * 2**20
"""What the kit may weigh: the device tool carries 64 MiB in all, the working tree (~3 MiB) included."""


OWN_PACKAGES = ("pipeline", "models", "flows", "bench")


def _ours(file: str | None) -> bool:
    """Whether ``file`` is a module of gigaseg's own packages (not of an environment inside the checkout)."""
    if not file:
        return False
    path = Path(file)
    return path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in OWN_PACKAGES


def probe() -> None:
    """Run what the GPU benches run, small and on the CPU; print the top-level modules our code imported."""
    import builtins

    direct: set[str] = set()
    original = builtins.__import__

    def recording(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and _ours((globals or {}).get("__file__")):
            direct.add(name.partition(".")[0])
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = recording
    try:
        _run_small()
    finally:
        builtins.__import__ = original
    print(json.dumps(sorted(direct)))


def _run_small() -> None:
    """A 1 Mpx job stage by stage and MONAI's window, on the CPU, with every row module imported."""
    import torch

    import bench.peer_bench
    import bench.peers.end_to_end
    import bench.peers.in_memory  # noqa: F401
    from bench.peers.fixtures import bench_cases, make_checkpoint, write_scene
    from bench.peers.monai_window import monai_probabilities
    from bench.peers.rows import Tiling
    from bench.stage_cost_bench import staged_run

    with tempfile.TemporaryDirectory(prefix="gigaseg-gpu-kit-") as tmp:
        folder = Path(tmp)
        case = next(c for c in bench_cases([1], []) if c.arch == "conv1x1")
        scene = write_scene(folder / "scene.tif", 1024)
        ckpt = make_checkpoint(case, folder / "conv1x1.safetensors")
        (folder / "run").mkdir()
        staged_run(str(scene), str(ckpt), folder / "run", copy=False)
        tiling = Tiling(tile=64, overlap=0.25, batch=2)
        monai_probabilities(torch.zeros(1, 96, 96), lambda x: torch.softmax(x, 1), tiling, "gaussian",
                            torch.device("cpu"))  # fmt: skip


def probed_modules() -> list[str]:
    """The top-level modules :func:`probe` imports, run in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_kit", "--probe"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": python_path(ROOT)},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def required(dist: str) -> list[str]:
    """The distributions ``dist`` declares it needs on the GPU machines (no extras), installed here."""
    from packaging.requirements import Requirement

    needs = []
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(
            {"python_version": PYTHON, "sys_platform": "linux", "platform_machine": "x86_64", "extra": ""}
        ):
            continue
        try:
            metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue
        needs.append(req.name)
    return needs


def kit(modules: list[str]) -> dict[str, str]:
    """Distribution → version of everything behind ``modules`` that must be carried, requirements included.

    Standard-library modules have no distribution; gigaseg's own code travels as the
    working tree; the image's packages are never carried (nor walked into).
    """
    from packaging.utils import canonicalize_name

    owners = metadata.packages_distributions()
    todo = [dist for module in modules for dist in owners.get(module, [])]
    wanted: dict[str, str] = {}
    while todo:
        dist = todo.pop()
        name = canonicalize_name(dist)
        if name in DEVICE_IMAGE or name in wanted or name == "gigaseg":
            continue
        wanted[name] = metadata.version(dist)
        todo += required(dist)
    return dict(sorted(wanted.items()))


def download(wanted: dict[str, str], dest: Path) -> list[Path]:
    """The wheels of ``wanted`` for the GPU machines' Python and platform, in ``dest`` (emptied first)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", PYTHON, "--implementation", "cp", *platforms, "--dest", str(dest),
         *(f"{name}=={version}" for name, version in wanted.items())],
        check=True,
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".gpu-kit", help="where the wheels go")
    p.add_argument("--list", action="store_true", help="print the kit; download nothing")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        probe()
        return 0
    wanted = kit(probed_modules())
    print("carried: " + ", ".join(f"{name}=={version}" for name, version in wanted.items()))
    if args.list:
        return 0
    wheels = download(wanted, args.dest)
    size = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB, in {args.dest}")
    if size > MAX_BYTES:
        limit = MAX_BYTES / 2**20
        print(
            f"gpu_kit: {args.dest}: {size / 2**20:.1f} MiB, over the {limit:.0f} MiB the device tool carries",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
