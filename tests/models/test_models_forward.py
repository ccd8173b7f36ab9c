"""Every registered model runs: any input size in, same-size logits out; trains; is deterministic."""

from __future__ import annotations

import pytest
import torch
from _models_cases import build_small, case_id, cases

import models

CASES = cases()
SIZES = {
    2: [(7, 13), (37, 30)],
    3: [(5, 7, 9), (9, 3, 10)],
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_any_size_gives_input_sized_logits(case):
    name, config = case
    model = build_small(name, **config).eval()
    for size in SIZES[model.spatial_dims]:
        x = torch.randn(1, model.in_channels, *size)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, model.num_classes, *size), f"{name} at {size}"
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backward_reaches_every_parameter(case):
    name, config = case
    model = build_small(name, **config).train()
    factor = model.downsampling
    # Batch 2: batch norm on a 1×1 map (image pooling) needs more than one value per channel.
    size = (factor + 1, max(1, factor - 1), factor + 1)[: model.spatial_dims]
    out = model(torch.randn(2, model.in_channels, *size))
    logits = out["out"] if isinstance(out, dict) else out
    assert logits.shape == (2, model.num_classes, *size)
    aux = out.get("aux", []) if isinstance(out, dict) else []
    if isinstance(out, dict) and "se" in out:  # EncNet's class-presence logits
        assert out["se"].shape == (2, model.num_classes)
        aux = [*aux, out["se"]]
    sum((a.square().mean() for a in aux), logits.square().mean()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{name}: parameters outside the graph: {unused[:5]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eval_mode_is_deterministic(case):
    name, config = case
    model = build_small(name, **config).eval()
    x = torch.randn(1, model.in_channels, *SIZES[model.spatial_dims][0])
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", [s.name for s in models.specs() if s.aux_heads])
def test_auxiliary_heads_come_in_training_mode_only_at_input_size(name):
    """Deep-supervision outputs for the training loop: one per declared head, none at inference."""
    model = build_small(name).train()
    size = (model.downsampling + 3, 2 * model.downsampling - 1)
    x = torch.randn(2, model.in_channels, *size)
    out = model(x)
    assert isinstance(out, dict) and len(out["aux"]) == len(model.spec.aux_heads)
    for aux in [out["out"], *out["aux"]]:
        assert aux.shape == (2, model.num_classes, *size)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


def test_batch_items_are_independent_in_eval_mode():
    """Tiles are batched by the engine: a tile's logits must not depend on its batch mates."""
    model = build_small("deeplabv3plus").eval()
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)
