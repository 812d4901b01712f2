"""SelfCon's multi-exit encoder: exit shapes, unshared sub-networks of the stated depth, gradients at both exits."""
import pytest
import torch
from torch import nn

from fastlt.errors import FastltError
from fastlt.models.multi_exit import EnsembleExit, MultiExitEncoder, SubnetworkExit
from fastlt.models.resnet import build_resnet


def encoder(exit_after=2, size="fc", arch="resnet18", width=8):
    torch.manual_seed(0)
    return MultiExitEncoder(build_resnet(arch, width=width), exit_after, size)


def blocks(stages: nn.Module) -> list[int]:
    return [len(stage) for stage in stages if isinstance(stage, nn.Sequential)]


@pytest.mark.parametrize("exit_after", [1, 2, 3])
@pytest.mark.parametrize("size", ["fc", "same", "small"])
def test_both_exits_give_backbone_sized_features(exit_after, size):
    model = encoder(exit_after, size)
    sub, main = model(torch.rand(3, 3, 16, 16))
    assert sub.shape == main.shape == (3, 64)  # width 8: layer4 has 64 channels
    assert SubnetworkExit(model)(torch.rand(3, 3, 16, 16)).shape == (3, 64)
    assert EnsembleExit(model)(torch.rand(3, 3, 16, 16)).shape == (3, 128)


def test_fc_subnetwork_is_pool_and_one_linear_from_the_exit_channels():
    model = encoder(2, "fc")
    (linear,) = [m for m in model.subnetwork.modules() if isinstance(m, nn.Linear)]
    assert (linear.in_features, linear.out_features) == (16, 64)  # layer2 of width 8 -> the 64 features
    x = torch.rand(2, 3, 16, 16)
    b = model.backbone
    tapped = b.layer2(b.layer1(b.stem(b.normalize(x))))
    torch.testing.assert_close(model(x)[0], linear(tapped.mean(dim=(2, 3))))


@pytest.mark.parametrize("arch, size, expected", [
    ("resnet18", "same", [2, 2]), ("resnet18", "small", [1, 1]),
    ("resnet50", "same", [6, 3]), ("resnet50", "small", [3, 1]),
])
def test_same_and_small_copy_the_later_stages_unshared(arch, size, expected):
    model = encoder(2, size, arch=arch, width=4)
    assert blocks(model.subnetwork) == expected
    shared = {id(p) for p in model.backbone.parameters()}
    assert not any(id(p) in shared for p in model.subnetwork.parameters())


def test_both_exits_and_the_shared_trunk_receive_gradients():
    model = encoder(2, "same")
    sub, main = model(torch.rand(4, 3, 16, 16))
    sub.sum().backward(retain_graph=True)
    assert all(p.grad is not None for p in model.subnetwork.parameters())
    assert model.backbone.layer1[0].conv1.weight.grad is not None  # the trunk before the exit is shared
    assert model.backbone.layer3[0].conv1.weight.grad is None  # the backbone after the exit is not on this path
    main.sum().backward()
    assert model.backbone.layer4[0].conv1.weight.grad is not None


def test_bad_settings_name_the_key():
    with pytest.raises(FastltError, match="model.exit_after"):
        encoder(4)
    with pytest.raises(FastltError, match="model.subnetwork"):
        encoder(2, "large")
