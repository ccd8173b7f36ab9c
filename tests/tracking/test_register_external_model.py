"""An ONNX model made elsewhere, registered, promoted and run as ``models:/NAME@champion`` (SQLite MLflow)."""

from __future__ import annotations

import mlflow
import numpy as np
import rasterio
import torch

from flows.cli import main
from flows.promote_model import promote_model
from models import build
from models.checkpoint import card_for
from models.formats.onnx_export import export_onnx
from pipeline.demos.sample_scene import CLASS_NAMES, write_sample_scene
from pipeline.engine.in_memory import segment_array
from pipeline.job.model_source import load_model
from pipeline.tracking import model_versions


def test_an_onnx_model_registers_promotes_and_runs_from_the_registry(tmp_path):
    torch.manual_seed(0)
    native = build("unet", in_channels=4, num_classes=len(CLASS_NAMES), width=4, depth=2, padding="same")
    path = export_onnx(native.eval(), card_for(native, CLASS_NAMES, tile_size=64), tmp_path / "lc.onnx")
    scene = write_sample_scene(tmp_path / "scene", 96, seed=1)

    assert main(["register", str(path), "--model-name", "byom-onnx", "--quiet"]) == 0
    decision = promote_model("byom-onnx", 1, scene.image, scene.labels, block=64)
    assert decision.action == "first" and decision.champion == 1

    found = model_versions.resolve("models:/byom-onnx@champion")
    assert found.checkpoint.name == "model.onnx"
    flavors = mlflow.models.Model.load(str(found.checkpoint.parent / "MLmodel")).flavors
    assert {"gigaseg", "onnx"} <= set(flavors)
    model, card = load_model("models:/byom-onnx@champion")
    assert card.class_names == list(CLASS_NAMES) and model.arch == "onnx"
    image = np.random.default_rng(0).random((4, 80, 96)).astype(np.float32)
    ours = segment_array(image, model, 64, with_probabilities=True)
    theirs = segment_array(image, native, 64, with_probabilities=True)
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)

    out = tmp_path / "lc.tif"
    argv = ["segment", str(scene.image), "-m", "models:/byom-onnx@champion", "-o", str(out)]
    assert main([*argv, "--workers", "0", "--no-track", "--quiet"]) == 0
    with rasterio.open(out) as src:
        assert src.tags()["GIGASEG_MODEL"] == "models:/byom-onnx@champion" and src.shape == (96, 96)
