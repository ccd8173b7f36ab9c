"""ImageNet checkpoints load into the backbones by name.

The reference state dicts here are written from the published layouts of those
checkpoints (names and shapes), independently of the backbone code, filled with
random values, saved to a file and loaded back.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import models
from models.backbones import BackboneWeightsError, load_backbone_weights, make_backbone

Shapes = dict[str, tuple[int, ...]]


def _bn(prefix: str, c: int, tracked: bool = True) -> Shapes:
    keys = {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}
    if tracked:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def vgg16_reference() -> Shapes:
    """torchvision-style VGG-16: conv layers at ``features`` indices, then the classifier."""
    shapes: Shapes = {}
    cin, index = 3, 0
    for n, c in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]:
        for _ in range(n):
            shapes[f"features.{index}.weight"] = (c, cin, 3, 3)
            shapes[f"features.{index}.bias"] = (c,)
            cin, index = c, index + 2  # conv, ReLU
        index += 1  # pooling
    # The classifier (4096×25088, 4096×4096, 1000×4096) is ignored on loading; its
    # shapes are shrunk here to keep the test file small.
    shapes.update({
        "classifier.0.weight": (8, 25088), "classifier.0.bias": (8,),
        "classifier.3.weight": (8, 8), "classifier.3.bias": (8,),
        "classifier.6.weight": (10, 8), "classifier.6.bias": (10,),
    })  # fmt: skip
    return shapes


def resnet_reference(depth: int, tracked: bool = True) -> Shapes:
    """torchvision-style ResNet (``tracked=False``: as saved before batch counters existed)."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    expansion = 4 if bottleneck else 1
    shapes: Shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64, tracked)}
    cin = 64
    for stage, n in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                convs = [(planes, cin, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, cin, 3), (planes, planes, 3)]
            for i, (co, ci, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{i}.weight"] = (co, ci, k, k)
                shapes.update(_bn(f"{p}.bn{i}", co, tracked))
            if b == 0 and (stage > 1 or cin != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, cin, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", planes * expansion, tracked))
            cin = planes * expansion
    shapes.update({"fc.weight": (1000, cin), "fc.bias": (1000,)})
    return shapes


def mobilenetv2_reference() -> Shapes:
    """torchvision-style MobileNetV2, including its 1280-channel conv and classifier."""
    shapes: Shapes = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    settings = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    cin, index = 32, 1
    for t, c, n in settings:
        for _ in range(n):
            p, hidden, i = f"features.{index}.conv", cin * t, 0
            if t != 1:
                shapes[f"{p}.0.0.weight"] = (hidden, cin, 1, 1)
                shapes.update(_bn(f"{p}.0.1", hidden))
                i = 1
            shapes[f"{p}.{i}.0.weight"] = (hidden, 1, 3, 3)
            shapes.update(_bn(f"{p}.{i}.1", hidden))
            shapes[f"{p}.{i + 1}.weight"] = (c, hidden, 1, 1)
            shapes.update(_bn(f"{p}.{i + 2}", c))
            cin, index = c, index + 1
    shapes["features.18.0.weight"] = (1280, 320, 1, 1)
    shapes.update(_bn("features.18.1", 1280))
    shapes.update({"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)})
    return shapes


def xception65_reference() -> Shapes:
    """The aligned Xception-65 naming of the DeepLabv3+ PyTorch ports (``block1`` … ``block20``)."""

    def sep(prefix: str, cin: int, cout: int) -> Shapes:
        return {
            f"{prefix}.conv1.weight": (cin, 1, 3, 3),
            **_bn(f"{prefix}.bn", cin),
            f"{prefix}.pointwise.weight": (cout, cin, 1, 1),
        }

    shapes: Shapes = {
        "conv1.weight": (32, 3, 3, 3),
        **_bn("bn1", 32),
        "conv2.weight": (64, 32, 3, 3),
        **_bn("bn2", 64),
    }
    # (cin, three output widths, first rep index of a separable conv, projection shortcut)
    blocks = [(64, (128,) * 3, 0, True), (128, (256,) * 3, 1, True), (256, (728,) * 3, 1, True)]
    blocks += [(728, (728,) * 3, 1, False)] * 16
    blocks += [(728, (728, 1024, 1024), 1, True)]
    for number, (cin, widths, first, projection) in enumerate(blocks, start=1):
        p, c, index = f"block{number}", cin, first
        for cout in widths:
            shapes.update(sep(f"{p}.rep.{index}", c, cout))
            shapes.update(_bn(f"{p}.rep.{index + 1}", cout))
            c, index = cout, index + 3  # separable conv, batch norm, ReLU
        if projection:
            shapes[f"{p}.skip.weight"] = (c, cin, 1, 1)
            shapes.update(_bn(f"{p}.skipbn", c))
    for i, (cin, cout) in enumerate([(1024, 1536), (1536, 1536), (1536, 2048)], start=3):
        shapes.update(sep(f"conv{i}", cin, cout))
        shapes.update(_bn(f"bn{i}", cout))
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


REFERENCES = {
    "vgg16": (vgg16_reference, ("classifier.",)),
    "resnet18": (lambda: resnet_reference(18), ("fc.",)),
    "resnet34": (lambda: resnet_reference(34), ("fc.",)),
    "resnet50": (lambda: resnet_reference(50), ("fc.",)),
    "resnet101": (lambda: resnet_reference(101, tracked=False), ("fc.",)),
    "mobilenetv2": (mobilenetv2_reference, ("classifier.", "features.18.")),
    "xception65": (xception65_reference, ("fc.",)),
}


def random_state(shapes: Shapes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 100, s, generator=g)
        if k.endswith("num_batches_tracked")
        else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_reference_checkpoint_loads_name_for_name(name, fmt, tmp_path):
    make_reference, head = REFERENCES[name]
    state = random_state(make_reference())
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    backbone = make_backbone(name, output_stride=8 if name == "vgg16" else 16)
    ignored = load_backbone_weights(backbone, path)
    assert ignored == sorted(k for k in state if k.startswith(head))
    loaded = backbone.state_dict()
    for key, value in state.items():
        if not key.startswith(head):
            assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def test_weights_load_through_a_built_model(tmp_path):
    model = models.build("deeplabv3", backbone="resnet18", multi_grid=(1, 2), num_classes=5)
    state = random_state(resnet_reference(18))
    save_file(state, tmp_path / "r18.safetensors")
    load_backbone_weights(model, tmp_path / "r18.safetensors")
    assert torch.equal(model.net.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_prefix_selects_a_backbone_inside_a_larger_checkpoint(tmp_path):
    state = {f"module.backbone.{k}": v for k, v in random_state(resnet_reference(18)).items()}
    state["module.classifier.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "full.pth")
    backbone = make_backbone("resnet18")
    load_backbone_weights(backbone, tmp_path / "full.pth", prefix="backbone.")
    assert torch.equal(backbone.conv1.weight, state["module.backbone.conv1.weight"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("layer2.0.conv1.weight"), "missing from the file: layer2.0.conv1.weight"),
        (lambda s: s.update(extra=torch.zeros(1)), "not in the backbone: extra"),
        (
            lambda s: s.update({"conv1.weight": torch.zeros(64, 4, 7, 7)}),
            "shape mismatch: conv1.weight (file (64, 4, 7, 7), model (64, 3, 7, 7))",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_mismatches_are_named_and_nothing_is_loaded(edit, message, tmp_path):
    state = random_state(resnet_reference(18))
    edit(state)
    save_file(state, tmp_path / "bad.safetensors")
    backbone = make_backbone("resnet18")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(BackboneWeightsError) as info:
        load_backbone_weights(backbone, tmp_path / "bad.safetensors")
    assert message in str(info.value)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"conv1.weight": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(BackboneWeightsError, match="not a readable weights file"):
        load_backbone_weights(make_backbone("resnet18"), tmp_path / "evil.pth")


def test_models_without_a_backbone_say_so(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(BackboneWeightsError, match="no pretrained backbone"):
        load_backbone_weights(models.build("unet", width=4), tmp_path / "w.safetensors")
