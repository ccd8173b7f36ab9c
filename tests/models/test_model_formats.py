"""A model made elsewhere runs like a native one: ONNX, TorchScript and torch.export (.pt2).

The same small U-Net as a native checkpoint and in each external format gives the
same labels and, to float rounding, the same probabilities; blockwise equals one
block for each; a card that leaves the geometry out gets it measured; and every
broken file is one line naming it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _onnx_graphs import conv1x1_onnx

from models import build
from models.checkpoint import CheckpointError, ModelCard, card_for, save_checkpoint
from models.formats import load_model_file
from models.formats.exported_program import save_exported_program
from models.formats.onnx_export import dynamic_axes, example_input, export_onnx, with_geometry
from models.formats.sidecar import write_sidecar
from models.formats.torchscript_model import save_torchscript
from pipeline.engine.in_memory import segment_array

FORMATS = ["onnx", "torchscript", "torch.export"]
TILE = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One seeded 3-band, 4-class U-Net in every format, each with its card inside."""
    folder = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    model = build("unet", in_channels=3, num_classes=4, width=4, padding="same").eval()
    card = card_for(model, ["water", "forest", "road", "bare"], tile_size=TILE)
    inside = with_geometry(card, model).to_json()
    example = example_input(model)
    with torch.no_grad():
        program = torch.export.export(model.net, (example,), dynamic_shapes=dynamic_axes(model))
        traced = torch.jit.trace(model.net, example)
    return {
        "native": save_checkpoint(folder / "unet.safetensors", model, card),
        "onnx": export_onnx(model, card, folder / "unet.onnx"),
        "torchscript": save_torchscript(traced, folder / "unet.ts", inside),
        "torch.export": save_exported_program(program, folder / "unet.pt2", inside),
    }


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return np.random.default_rng(3).random((3, 96, 128)).astype(np.float32)


def _segment(path: Path, image: np.ndarray, block: int):
    model, _ = load_model_file(path)
    return segment_array(image, model, TILE, 0.25, block=block, with_probabilities=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_native_labels_blockwise_and_whole(fmt, files, scene):
    native = _segment(files["native"], scene, 4096)
    whole = _segment(files[fmt], scene, 4096)
    blocks = _segment(files[fmt], scene, 32)
    np.testing.assert_array_equal(whole.labels, native.labels)
    np.testing.assert_allclose(whole.probabilities, native.probabilities, atol=1e-5)
    np.testing.assert_array_equal(blocks.labels, whole.labels)
    np.testing.assert_allclose(blocks.probabilities, whole.probabilities, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_carries_its_card_and_geometry(fmt, files):
    native, native_card = load_model_file(files["native"])
    model, card = load_model_file(files[fmt])
    assert card.class_names == native_card.class_names and card.tile_size == TILE
    assert (model.downsampling, model.reach, model.spatial_dims) == (16, native.reach, 2)
    assert (model.in_channels, model.num_classes) == (3, 4)
    assert model.fully_convolutional, "a U-Net exported elsewhere should still blend with crop"


def test_a_card_without_geometry_gets_it_measured_and_says_so(files, tmp_path, caplog):
    native, card = load_model_file(files["native"])
    path = shutil.copy(files["onnx"], tmp_path / "bare.onnx")
    write_sidecar(path, card)  # the sidecar wins over the embedded card, and declares no geometry
    with caplog.at_level(logging.INFO, logger="gigaseg"):
        model, found = load_model_file(path)
    assert model.downsampling == native.downsampling
    assert native.reach <= model.reach < native.reach + native.downsampling
    assert (found.downsampling, found.reach) == (model.downsampling, model.reach)
    said = [r.getMessage() for r in caplog.records if "measured by probing" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0]


def _one_line(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as err:
        load_model_file(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_a_corrupt_onnx_file_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07this is no protobuf at all")
    _one_line(tmp_path / "m.onnx", "not a readable ONNX model")


def test_an_onnx_model_of_another_input_rank_is_one_line(tmp_path):
    path = conv1x1_onnx(tmp_path / "m.onnx", rank=3)
    _one_line(path, r"has rank 3 .*gigaseg feeds \(N, C, Y, X\)")


def test_a_card_that_contradicts_the_output_channels_is_one_line(tmp_path):
    path = conv1x1_onnx(tmp_path / "m.onnx", classes=2)
    write_sidecar(path, ModelCard(arch="onnx", config={}, class_names=["a", "b", "c"]))
    _one_line(path, "the card names 3 classes .* but the model outputs 2 channels")


def test_a_torch_save_pickle_passed_as_torchscript_is_refused_unread(tmp_path):
    torch.save(torch.nn.Conv2d(3, 2, 1), tmp_path / "m.ts")  # a zip with data.pkl and no code/
    _one_line(tmp_path / "m.ts", "a PyTorch pickle")


def test_a_pt2_archive_with_pickled_weights_is_refused_unread(files, tmp_path):
    import zipfile

    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(files["torch.export"]) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(item, data)
    _one_line(path, "a torch.export archive with pickled parts .*never loads")


def test_an_onnx_model_without_a_card_asks_for_one(tmp_path):
    path = conv1x1_onnx(tmp_path / "m.onnx")
    _one_line(path, "no model card .* gigaseg model-card")
