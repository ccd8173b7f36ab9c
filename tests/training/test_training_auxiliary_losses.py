"""The training step uses every auxiliary output a model exposes, with its paper's weight.

One step of the trainer's loss (``pipeline.training.trainer.batch_loss``) on EncNet
(FCN auxiliary head + SE-loss) and ICNet (cascade label guidance), with the
registry's weights and with them switched off: the auxiliary losses must change
the gradients of the shared trunk and be the only source of the heads' own.
"""

from __future__ import annotations

import pytest
import torch
from _models_cases import build_small

import models
from pipeline.training.losses import class_presence
from pipeline.training.settings import TrainSettings, auxiliary_loss_weights
from pipeline.training.trainer import batch_loss


def _gradients(model, x, y, aux_weights, se_weight) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the same dropout masks in every call
    model.zero_grad(set_to_none=True)
    batch_loss(model, x, y, "ce", aux_weights, se_weight).backward()
    return {n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["encnet", "icnet"])
def test_auxiliary_losses_change_the_training_gradients(arch):
    spec = models.get_spec(arch)
    aux_weights, se_weight = auxiliary_loss_weights(TrainSettings(arch=arch))
    assert aux_weights == list(spec.aux_heads.values()) and aux_weights
    torch.manual_seed(0)
    model = build_small(arch, num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    y[:, :8] = -1  # nodata

    full = _gradients(model, x, y, aux_weights, se_weight)
    main_only = _gradients(model, x, y, [0.0] * len(aux_weights), 0.0)
    trunk = next(n for n in full if n.startswith(("backbone.", "trunk.")))
    assert not torch.allclose(full[trunk], main_only[trunk])
    head_params = [n for n in full if n.startswith(("aux.", "cff_medium.classifier", "cff_high.classifier"))]
    assert head_params
    for name in head_params:
        assert full[name].abs().sum() > 0
        assert name not in main_only or main_only[name].abs().sum() == 0

    if se_weight:
        with_se = _gradients(model, x, y, [0.0] * len(aux_weights), se_weight)
        assert with_se["head.encode.se.weight"].abs().sum() > 0
        assert "head.encode.se.weight" not in main_only
        assert not torch.allclose(with_se[trunk], main_only[trunk])

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    opt.zero_grad()
    batch_loss(model, x, y, "ce+dice", aux_weights, se_weight).backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.net.named_parameters() if n in head_params)


def test_one_aux_weight_overrides_the_papers():
    assert auxiliary_loss_weights(TrainSettings(arch="icnet", aux_weight=0.1)) == ([0.1, 0.1], 0.0)
    assert auxiliary_loss_weights(TrainSettings(arch="encnet")) == ([0.2], 0.2)
    assert auxiliary_loss_weights(TrainSettings(arch="unet")) == ([], 0.0)


def test_class_presence_ignores_nodata():
    y = torch.tensor([[[0, 2], [-1, 2]], [[-1, -1], [1, 1]]])
    assert class_presence(y, 3).tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
