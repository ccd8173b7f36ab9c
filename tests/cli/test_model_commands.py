"""``gigaseg model-card`` and ``gigaseg export-onnx``, in process, on tiny models."""

from __future__ import annotations

import json

import torch

from flows.cli import main
from models import build
from models.checkpoint import card_for, save_checkpoint
from models.formats import load_model_file
from models.formats.sidecar import sidecar_path
from tests.models._onnx_graphs import conv1x1_onnx


def test_model_card_writes_a_checked_sidecar_with_the_measured_geometry(tmp_path, capsys):
    path = conv1x1_onnx(tmp_path / "m.onnx", in_channels=3, classes=2)
    argv = ["model-card", str(path), "--classes", "land,sea", "--bands", "3,2,1", "--gsd", "0.5"]
    assert main([*argv, "--colors", "0,128,0;0,0,255", "--tile", "128"]) == 0
    assert "downsampling 1, reach 0" in capsys.readouterr().err
    card = json.loads(sidecar_path(path).read_text())
    assert card["class_names"] == ["land", "sea"] and card["gsd"] == 0.5 and card["bands"] == [3, 2, 1]
    assert (card["downsampling"], card["reach"], card["spatial_dims"]) == (1, 0, 2)
    model, loaded = load_model_file(path)
    assert loaded.class_colors == [(0, 128, 0), (0, 0, 255)] and model.spec.default_tile == 128


def test_model_card_embeds_into_onnx_and_refuses_a_contradicting_card(tmp_path, capsys):
    path = conv1x1_onnx(tmp_path / "m.onnx", classes=2)
    assert main(["model-card", str(path), "--classes", "a,b", "--embed", "--quiet"]) == 0
    assert not sidecar_path(path).exists() and load_model_file(path)[1].class_names == ["a", "b"]
    assert main(["model-card", str(path), "--classes", "a,b,c", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gigaseg: {path}: the card names 3 classes (a, b, c) but the model outputs 2 channels"]
    assert not sidecar_path(path).exists()


def test_export_onnx_writes_a_model_that_gives_the_checkpoints_logits(tmp_path):
    torch.manual_seed(0)
    net = build("unet", in_channels=2, num_classes=3, width=4, depth=1, padding="same").eval()
    ckpt = save_checkpoint(tmp_path / "m.safetensors", net, card_for(net, ["a", "b", "c"], tile_size=64))
    assert main(["export-onnx", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--quiet"]) == 0
    model, card = load_model_file(tmp_path / "m.onnx")
    assert card.class_names == ["a", "b", "c"] and (card.downsampling, card.reach) == (
        net.downsampling,
        net.reach,
    )
    x = torch.randn(2, 2, 48, 80)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=1e-5)
    assert main(["export-onnx", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--quiet"]) == 2  # no --overwrite
