"""Every row of the bad-input table in docs/operations.md, through the real command line.

Each case runs ``python -m flows.cli`` in a subprocess in a folder holding a scene and
an earlier run's output: exit status 2, exactly the documented line on stderr, no
traceback, nothing new on disk, and the earlier output byte-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build
from models.checkpoint import ModelCard, save_checkpoint
from tests.cli import bad_input_cases
from tests.cli.bad_input_cases import CASES, Case

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained 3-band, 2-class U-Net checkpoint whose bands are named red, green, blue."""
    torch.manual_seed(0)
    net = build("unet", in_channels=3, num_classes=2, width=4, depth=2)
    names = ["red", "green", "blue"]
    card = ModelCard(arch="unet", config=net.config, class_names=["a", "b"], tile_size=64, band_names=names)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", net, card)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_every_bad_input_row_is_one_line_and_loses_nothing(case: Case, model: Path, tmp_path: Path):
    bad_input_cases.make_scene(tmp_path)
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path.parent}/m.db"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *case.argv(str(model))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == case.status, done.stderr
    assert "Traceback" not in done.stderr
    assert lines == [case.message]
    assert _snapshot(tmp_path) == before  # nothing new, nothing changed


def test_the_documented_table_is_the_tested_cases():
    text = bad_input_cases.DOC.read_text()
    assert bad_input_cases.rewrite(text) == text, "run python -m tests.cli.bad_input_cases"
