"""LoTaR's own linear evaluation (train_lincls.py): its class groups, the unpadded stem, and an independent loop
with the model in train mode while the fc trains (Adam, batch statistics, moving running statistics)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlt.errors import FastltError
from fastlt.evaluate.linear import seeded_linear
from fastlt.evaluate.lotar_probe import LoTaRProbeConfig, lotar_groups, lotar_scope, train_lotar_fc, unpad_stem
from fastlt.models.resnet import build_resnet


def reference_groups(counts: list[int]) -> dict[str, list[int]]:
    """train_lincls.py:171-195 print_category_accs: sorted(class_dist.items(), key=count, reverse=True), then the
    positions [0, 3), [3, 7), [7, 10) (CIFAR-10) or [0, 33), [33, 67), [67, 100) (CIFAR-100)."""
    cuts = {10: {"many": (0, 3), "medium": (3, 7), "few": (7, 10)},
            100: {"many": (0, 33), "medium": (33, 67), "few": (67, 100)}}[len(counts)]
    ranked = [c for c, _ in sorted(dict(enumerate(counts)).items(), key=lambda p: p[1], reverse=True)]
    return {name: sorted(ranked[low:high]) for name, (low, high) in cuts.items()}


@pytest.mark.parametrize("counts", [
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],  # CIFAR-10-LT, ratio 100
    [50, 83, 139, 232, 387, 645, 1077, 1796, 2997, 5000],  # the other way round
    [7, 7, 3, 9, 3, 3, 7, 1, 9, 3],  # ties keep the class order
    list(np.random.default_rng(0).integers(1, 20, 100)),  # CIFAR-100, with many ties
])
def test_groups_are_train_lincls_cut(counts):
    got = lotar_groups(np.array(counts))
    assert {name: ids.tolist() for name, ids in got.items()} == reference_groups(counts)


def test_unpadded_stem_is_the_trained_weights_in_a_padding_0_convolution():
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", width=4).eval()
    x = torch.rand(2, 3, 16, 16)
    copy_ = copy.deepcopy(backbone)
    unpad_stem(copy_)
    # train_lincls.py:98: Conv2d(3, 64, kernel_size=3, stride=1, bias=False), padding 0, the trained weights loaded
    rebuilt = nn.Conv2d(3, 4, kernel_size=3, stride=1, bias=False)
    rebuilt.weight.data.copy_(backbone.stem[0].weight)
    with torch.no_grad():
        torch.testing.assert_close(copy_.stem[0](backbone.normalize(x)), rebuilt(backbone.normalize(x)))
        assert copy_(x).shape == backbone(x).shape  # the pooled features keep their size
        assert not torch.allclose(copy_(x), backbone(x))
    assert backbone.stem[0].padding == (1, 1)
    with pytest.raises(FastltError, match="eval.lotar_stem: 'unpadded' rebuilds the CIFAR stem .* 7x7, stride 2"):
        unpad_stem(build_resnet("resnet18", stem="imagenet", width=4))


def reference_lincls(backbone, images, labels, test_images, num_classes, epochs, lr, batch_size, seed, unpadded):
    """train_lincls.py:94-156, independently: the pretrained encoder with the stem rebuilt without padding and the
    trained weights loaded, every parameter frozen but a fresh fc, model.train() over the training batches
    (Adam), model.eval() for the test; the last epoch's predictions. The fc's init and the batch order come from
    one generator seeded with ``seed`` (fastlt's draws: the fc, then one permutation per epoch)."""
    model = copy.deepcopy(backbone)
    if unpadded:
        trained = model.stem[0].weight.data
        model.stem[0] = nn.Conv2d(3, trained.shape[0], kernel_size=3, stride=1, bias=False)
        model.stem[0].weight.data.copy_(trained)
    for parameter in model.parameters():
        parameter.requires_grad = False
    generator = torch.Generator().manual_seed(seed)
    fc = seeded_linear(backbone.feature_dim, num_classes, generator)
    optimizer = torch.optim.Adam(fc.parameters(), lr=lr)
    pixels = images.permute(0, 3, 1, 2).float() / 255
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = F.cross_entropy(fc(model(pixels[batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return fc(model(test_images.permute(0, 3, 1, 2).float() / 255)).argmax(1), model


@pytest.mark.parametrize("stem", ["unpadded", "as-trained"])
def test_fc_training_equals_train_lincls_with_the_model_in_train_mode(stem):
    torch.manual_seed(1)
    backbone = build_resnet("resnet18", width=4).eval()
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 12, 12, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 3, (40,), generator=generator)
    test_images = torch.randint(0, 256, (30, 12, 12, 3), dtype=torch.uint8, generator=generator)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    config = LoTaRProbeConfig(epochs=3, lr=0.05, batch_size=16, stem=stem, seed=5)
    probe = train_lotar_fc(backbone, images, labels, test_images, backbone.feature_dim, 3, config)
    expected, model = reference_lincls(backbone, images, labels, test_images, 3, 3, 0.05, 16, 5, stem == "unpadded")
    assert torch.equal(probe.predictions, expected)
    for (name, got), want in zip(probe.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)  # the running statistics moved the same way
    moved = probe.model.state_dict()["stem.1.running_mean"]
    assert not torch.allclose(moved, before["stem.1.running_mean"])  # train mode moved them
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # the checkpoint's are kept


def test_scope_names_the_analogue():
    assert lotar_scope("cifar10") == "whole train part, last epoch"
    assert "fastlt's analogue" in lotar_scope("cifar100") and "AttributeError" in lotar_scope("digits")
