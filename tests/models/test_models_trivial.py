"""conv1x1 is a 1×1 convolution in all but its kernel: same parameters, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build


@pytest.mark.parametrize(
    ("arch", "in_channels", "shape"),
    [
        ("conv1x1", 1, (2, 1, 17, 23)),
        ("conv1x1", 3, (2, 3, 17, 23)),
        ("conv1x1_3d", 1, (2, 1, 5, 7, 9)),
        ("conv1x1_3d", 2, (2, 2, 5, 7, 9)),
    ],
)
def test_pointwise_model_equals_the_convolution_with_its_state_dict(arch, in_channels, shape):
    model = build(arch, in_channels=in_channels, num_classes=4)
    conv = (nn.Conv3d if len(shape) == 5 else nn.Conv2d)(in_channels, 4, kernel_size=1)
    conv.load_state_dict(model.net.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(model(x), conv(x), atol=1e-6)
    channels_last = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    with torch.no_grad():
        assert torch.allclose(model(x.contiguous(memory_format=channels_last)), conv(x), atol=1e-6)


def test_pointwise_model_trains():
    model = build("conv1x1", in_channels=1, num_classes=2)
    x = torch.randn(4, 1, 8, 8)
    target = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), target)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
