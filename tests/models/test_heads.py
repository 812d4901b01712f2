"""LoTaR's head against its definition (andrew15818/SimCLR models/model.py:12-16 over models/resnet.py:168);
linear evaluation keeps the pooled backbone features, as its train_lincls.py drops the fc."""
import torch
from torch import nn

from fastlt.methods import build_method
from fastlt.recipe import recipe_from_dict


def lotar_recipe(**model):
    return recipe_from_dict({"model": {"width": 4, "head": "lotar", "fc_dim": 10, "projector_hidden": 128,
                                       "projector_out": 128, **model},
                             "method": {"name": "lotar"}}, "test")


def test_lotar_head_is_fc_then_linear_relu_linear_without_batch_norm():
    torch.manual_seed(0)
    method = build_method(lotar_recipe(), num_samples=8)
    head = method.head
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    feature_dim = method.backbone.feature_dim
    assert [(l.in_features, l.out_features) for l in linears] == [(feature_dim, 10), (10, 128), (128, 128)]
    assert all(l.bias is not None for l in linears)
    features = torch.randn(6, feature_dim)
    fc, first, second = linears
    # the reference: encoder.fc (no activation after it), then Linear, ReLU, Linear
    expected = second(torch.relu(first(features @ fc.weight.T + fc.bias)))
    torch.testing.assert_close(head(features), expected)


def test_linear_evaluation_keeps_the_pooled_features_before_the_fc():
    method = build_method(lotar_recipe(), num_samples=8)
    extractor = method.feature_extractor()
    assert extractor is method.backbone
    assert extractor(torch.rand(3, 3, 32, 32)).shape == (3, method.backbone.feature_dim)  # 8 x width, not fc_dim


def test_the_lotar_head_builds_on_a_resnet50_trunk():
    method = build_method(lotar_recipe(arch="resnet50", fc_dim=100), num_samples=8)
    assert method.head[0].in_features == 4 * 8 * 4 and method.head[0].out_features == 100
