"""Canonical configurations reproduce the papers' network sizes.

Counts are taken on the meta device: no memory, no forward pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.backbones import make_backbone
from models.backbones.densenet import DenseNet


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def canonical(name: str) -> models.SegmentationModel:
    with torch.device("meta"):
        return models.build(name)


KNOWN_DEVIATIONS = {
    # Table 3 of the paper says 1.5M, but the architecture the paper describes
    # (4 layers per block, growth 12, 48 first filters: the 56 layers of the
    # name) has 1.377M trainable parameters, 1.398M counting batch-norm running
    # statistics the way the 67 and 103 figures are matched (see below).
    "fcdensenet56": "paper's 1.5M disagrees with its own architecture (1.38M)",
    # The layers of Table 1 (Xception A: separable convolutions of 8–192 channels, three fc
    # attentions to 1000 and back) and the decoder total 1.83M, a quarter of the stated 7.8M.
    "dfanet": "paper's 7.8M disagrees with the layers its Table 1 lists (1.83M)",
}

WITH_PAPER_FIGURE = [s.name for s in models.specs() if s.paper_params]


@pytest.mark.parametrize("name", WITH_PAPER_FIGURE)
def test_canonical_parameter_count_within_2_percent_of_paper(name, request):
    if name in KNOWN_DEVIATIONS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_DEVIATIONS[name], strict=True))
    spec = models.get_spec(name)
    ours = count(canonical(name))
    assert abs(ours - spec.paper_params) / spec.paper_params < 0.02, (ours, spec.paper_params)


def test_unet_matches_the_layer_list_of_the_paper_figure():
    """Ronneberger et al. state no count; summing Fig. 1 layer by layer gives 31,030,658."""
    assert count(canonical("unet")) == 31_030_658
    # Padding changes no parameter: the same-padded variant has the same count.
    with torch.device("meta"):
        assert count(models.build("unet", padding="same")) == 31_030_658


def test_unet3d_reproduces_the_papers_exact_count_under_its_conventions():
    """19,069,955 (Çiçek et al.) = convolutions with biases, batch norm without scale/shift,
    bias-free up-convolutions (a Caffe BatchNorm layer without a Scale layer)."""
    net = canonical("unet3d")
    caffe_style = 0
    for module in net.modules():
        if isinstance(module, nn.Conv3d):
            caffe_style += module.weight.numel() + module.out_channels
        elif isinstance(module, nn.ConvTranspose3d):
            caffe_style += module.weight.numel()
    assert caffe_style == 19_069_955
    assert count(net) == 19_073_187


def test_fcdensenet_matches_paper_counting_batch_norm_statistics():
    """The 67 and 103 figures match to 0.3% when batch-norm running mean/variance count too
    (as a Lasagne parameter count does by default)."""
    for name, paper in (("fcdensenet67", 3.5e6), ("fcdensenet103", 9.4e6)):
        net = canonical(name)
        stats = sum(
            m.running_mean.numel() + m.running_var.numel()
            for m in net.modules()
            if isinstance(m, nn.BatchNorm2d)
        )
        assert abs(count(net) + stats - paper) / paper < 0.003


def test_deeplab_v1_large_fov_count():
    """Table 2 of DeepLab v1: DeepLab-LargeFOV has 20.5M parameters."""
    assert count(canonical("deeplabv1")) == 20_505_429


# Parameter counts of the ImageNet classification networks the backbones mirror,
# without their classifier: e.g. ResNet-50 has 25,557,032 with a 2048×1000 fc.
IMAGENET_TRUNKS = {
    "vgg16": 138_357_544 - (25088 * 4096 + 4096) - (4096 * 4096 + 4096) - (4096 * 1000 + 1000),
    "resnet18": 11_689_512 - (512 * 1000 + 1000),
    "resnet34": 21_797_672 - (512 * 1000 + 1000),
    "resnet50": 25_557_032 - (2048 * 1000 + 1000),
    "resnet101": 44_549_160 - (2048 * 1000 + 1000),
    # Without the 1×1 conv to 1280 (+ its batch norm) and the classifier.
    "mobilenetv2": 3_504_872 - (320 * 1280 + 2 * 1280) - (1280 * 1000 + 1000),
}


def test_densenet121_trunk_matches_the_imagenet_network():
    """DenseASPP's backbone: DenseNet-121 (7,978,856 with its 1024×1000 classifier)."""
    with torch.device("meta"):
        trunk = DenseNet(121, output_stride=8)
    assert count(trunk) == 7_978_856 - (1024 * 1000 + 1000)


@pytest.mark.parametrize("name", sorted(IMAGENET_TRUNKS))
def test_backbone_sizes_match_the_imagenet_networks(name):
    with torch.device("meta"):
        backbone = make_backbone(name, output_stride=8 if name == "vgg16" else 16)
    assert count(backbone) == IMAGENET_TRUNKS[name]
