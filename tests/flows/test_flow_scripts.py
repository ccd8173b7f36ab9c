"""The flow files run as scripts (``python flows/segment_scene.py ARGS``, what ``ray submit``
runs): the same options and messages as ``gigaseg``, and the script's module loaded once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        *(["-X", "importtime"] if importtime else []),
        str(ROOT / "flows" / f"{name}.py"),
    ]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=600)


def _imported(stderr: str, module: str) -> bool:
    """Whether ``-X importtime`` output lists ``module`` as imported."""
    return re.search(rf"\|\s+{re.escape(module)}$", stderr, re.MULTILINE) is not None


def test_segment_script_runs_its_own_flow_without_importing_itself_again(
    small_scene: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.tif"
    run = _script(
        "segment_scene", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(out),
        "--tile", "64", "--block", "256", "--chunk", "128", "--workers", "0", "--no-track",
        importtime=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"gigaseg: wrote {out}" in run.stderr
    assert _imported(run.stderr, "flows.script"), "the probe must see the script's imports"
    assert not _imported(run.stderr, "flows.segment_scene"), "the script's module was loaded twice"
    assert not _imported(run.stderr, "flows.cli")
    with rasterio.open(out) as dst, rasterio.open(small_scene) as src:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)


def test_segment_script_reports_a_user_error_in_one_line_with_status_2(tmp_path: Path) -> None:
    run = _script(
        "segment_scene", str(tmp_path / "missing.tif"), "-m", "arch:conv1x1", "-o", str(tmp_path / "o.tif")
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"gigaseg: {tmp_path / 'missing.tif'}: no such file"


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("segment_scene", "segment"),
        ("train_model", "train"),
        ("promote_model", "promote"),
        ("watch_imagery", "watch"),
    ],
)
def test_script_usage_errors_name_the_gigaseg_command(name: str, command: str) -> None:
    run = _script(name)
    assert run.returncode == 2
    assert f"gigaseg {command}: error: the following arguments are required" in run.stderr
