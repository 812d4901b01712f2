"""ResNet stems, widths, feature sizes, in-model normalisation, and the projector layout."""
import pytest
import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.models.heads import projector
from fastlt.models.resnet import IMAGENET_MEAN, IMAGENET_STD, build_resnet


def test_resnet18_cifar_stem_keeps_resolution_until_layer2():
    model = build_resnet("resnet18", stem="cifar", width=8).eval()
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    x = torch.rand(2, 3, 32, 32)
    assert model.layer1(model.stem(model.normalize(x))).shape == (2, 8, 32, 32)
    assert model(x).shape == (2, 64) and model.feature_dim == 64


def test_standard_widths_and_imagenet_stem():
    assert build_resnet("resnet18").feature_dim == 512
    resnet50 = build_resnet("resnet50", stem="imagenet").eval()
    assert resnet50.feature_dim == 2048
    assert resnet50.stem[0].kernel_size == (7, 7) and isinstance(resnet50.stem[3], nn.MaxPool2d)
    assert resnet50(torch.rand(1, 3, 64, 64)).shape == (1, 2048)
    # ResNet-18 parameter count with the CIFAR stem (no fc): 11.17 M, as in the literature.
    count = sum(p.numel() for p in build_resnet("resnet18").parameters())
    assert 11_100_000 < count < 11_200_000


def test_normalisation_is_inside_the_model():
    model = build_resnet("resnet18", width=4)
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std)


def test_channels_last_gives_same_features():
    model = build_resnet("resnet18", width=8).eval()
    x = torch.rand(2, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_bad_arch_stem_width_are_user_errors():
    with pytest.raises(FastltError, match="model.arch"):
        build_resnet("resnet19")
    with pytest.raises(FastltError, match="model.stem"):
        build_resnet("resnet18", stem="tiny")
    with pytest.raises(FastltError, match="model.width"):
        build_resnet("resnet18", width=0)


def test_projector_layout_matches_reference():
    head = projector(512, 512, 128, num_layers=2)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert head[0].bias is not None and head[3].bias is None
    assert head[3].out_features == 128
    three = projector(512, 512, 128, num_layers=3)
    assert [type(m) for m in three].count(nn.Linear) == 3 and not isinstance(three[-1], nn.ReLU)
