"""`gigaseg models` lists the registry; `gigaseg train --backbone-weights` loads a pretrained encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flows.cli import main
from flows.train_model import train_model
from models import build, names
from models.checkpoint import load_checkpoint
from pipeline.training.settings import TrainSettings
from tests.conftest import write_raster


def test_models_command_lists_every_registered_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    assert listed == set(names())
    assert "31.03M" in out  # the canonical U-Net's own parameter count, not a hard-coded row


def test_models_command_rejects_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "unet", "no-such-net"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gigaseg: unknown architecture(s): no-such-net (see gigaseg models)"


@pytest.fixture
def labelled_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    labels = (np.add.outer(np.arange(96), np.arange(160)) // 40 % 3).astype(np.uint8)
    image = (labels[None] * 60 + rng.integers(0, 40, (3, 96, 160))).astype(np.uint8)
    return write_raster(tmp_path / "img.tif", image), write_raster(tmp_path / "lbl.tif", labels[None])


def test_training_starts_from_the_given_backbone_weights(tmp_path: Path, labelled_pair) -> None:
    torch.manual_seed(123)
    donor = build("deeplabv3plus", in_channels=3, num_classes=3, width_mult=1 / 16)
    weights = {k: v.contiguous() for k, v in donor.net.backbone.state_dict().items()}
    save_file(weights, tmp_path / "backbone.safetensors")

    image, labels = labelled_pair
    out = tmp_path / "model.safetensors"
    settings = TrainSettings(
        arch="deeplabv3plus",
        arch_config={"width_mult": 1 / 16},
        tile=64,
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        lr=1e-12,
        backbone_weights=str(tmp_path / "backbone.safetensors"),
    )
    work = tmp_path / "w"
    train_model([str(image)], [str(labels)], "bb", settings, work_dir=work, output=out, register=False)
    model, _ = load_checkpoint(out)
    trained = model.net.backbone.state_dict()
    convs = [k for k in weights if k.endswith("weight") and weights[k].ndim == 4]
    assert convs
    for k in convs:
        torch.testing.assert_close(trained[k], weights[k], atol=1e-6, rtol=0)


def test_backbone_weights_for_a_model_without_backbone_is_a_user_error(
    tmp_path: Path, labelled_pair, capsys: pytest.CaptureFixture[str]
) -> None:
    save_file({"w": torch.zeros(1)}, tmp_path / "bb.safetensors")
    image, labels = labelled_pair
    out = tmp_path / "m.safetensors"
    args = ["train", str(image), "--labels", str(labels), "-o", str(out), "--tile", "64", "--epochs", "1"]
    args += ["--steps-per-epoch", "1", "--work-dir", str(tmp_path / "w")]
    code = main([*args, "--backbone-weights", str(tmp_path / "bb.safetensors"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"gigaseg: {tmp_path / 'bb.safetensors'}:") and "no pretrained backbone" in err
    assert "\n" not in err and not out.exists()
