"""Every registered model survives a checkpoint round trip bit for bit."""

from __future__ import annotations

import pytest
import torch
from _models_cases import build_small

import models
from models.checkpoint import card_for, load_checkpoint, read_card, save_checkpoint


@pytest.mark.parametrize("name", models.names())
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = build_small(name)
    dims = model.spatial_dims
    size = (11, 13, 9)[:dims]
    # A few training-mode passes move the batch-norm statistics off their defaults,
    # so a checkpoint that dropped buffers would be caught.
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.randn(2, model.in_channels, *size))
    model.eval()
    x = torch.randn(1, model.in_channels, *size)
    with torch.no_grad():
        expected = model(x)
    path = save_checkpoint(tmp_path / f"{name}.safetensors", model, card_for(model))
    loaded, card = load_checkpoint(path)
    assert card.arch == name and read_card(path).config == card.config
    assert loaded.config.keys() == model.config.keys()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("header_length", [0x80, 0x0280, 0x0380, 0x0580])
def test_a_safetensors_header_length_that_starts_like_a_pickle_is_not_refused(tmp_path, header_length):
    from models.checkpoint import _refuse_pickle

    path = tmp_path / "m.safetensors"
    path.write_bytes(header_length.to_bytes(8, "little") + b"{" + b" " * (header_length - 1))
    _refuse_pickle(path)  # no CheckpointError: the reader says what is wrong, if anything


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_bare_pickle_is_named_as_one(tmp_path, protocol):
    from models.checkpoint import CheckpointError, _refuse_pickle

    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        _refuse_pickle(path)


def test_band_names_are_kept_and_a_card_saved_without_them_still_reads():
    import json

    from models.checkpoint import CheckpointError, ModelCard

    config = {"in_channels": 2, "num_classes": 2}
    card = ModelCard("unet", config, ["a", "b"], band_names=["red", "nir"])
    assert ModelCard.from_json(card.to_json()).band_names == ["red", "nir"]
    older = json.loads(card.to_json())
    del older["band_names"]  # a card saved before cards named their bands
    assert ModelCard.from_json(json.dumps(older)).band_names is None
    with pytest.raises(CheckpointError, match=r"3 band names \['r', 'g', 'b'\] for 2 input channels"):
        ModelCard("unet", config, ["a", "b"], band_names=["r", "g", "b"])
