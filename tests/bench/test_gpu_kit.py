"""The GPU check's preparation: the wheels a lent GPU machine lacks, and refusals where there is no GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from bench import peer_bench, stage_cost_bench
from bench.gpu_kit import DEVICE_IMAGE, kit, probed_modules

ROOT = Path(__file__).resolve().parents[2]


def test_the_kit_carries_the_raster_stack_and_nothing_the_machine_already_has():
    """The probe runs a small job and MONAI's window here; what our code imports, with its requirements,
    is carried, less the image's packages. Packages imported only because they are installed here
    (boto3 by rasterio, MLflow by MONAI) stay behind, and so does gigaseg itself (the tree travels)."""
    carried = kit(probed_modules())
    assert {"rasterio", "zarr", "numcodecs", "affine", "pystac", "monai"} <= set(carried)
    assert {"torch", "numpy", "scipy", "boto3", "mlflow", "prefect", "gigaseg"}.isdisjoint(carried)
    assert DEVICE_IMAGE.isdisjoint(carried)
    assert all(version[0].isdigit() for version in carried.values())


def test_the_gpu_check_without_its_wheels_says_so_in_one_line(tmp_path):
    env = {**os.environ, "GPU_KIT": str(tmp_path / "empty-kit"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "empty-kit" in proc.stderr and "bench.gpu_kit" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benches would run")
@pytest.mark.parametrize("bench", [peer_bench, stage_cost_bench], ids=["peer_bench", "stage_cost_bench"])
def test_a_gpu_bench_asked_for_cuda_without_a_gpu_stops_at_once(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cuda", "--no-record"])
    assert stop.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
