"""Self-damaging encoder: global magnitude masks and separate batch-norm copies per branch."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastlt.models.resnet import build_resnet
from fastlt.models.self_damaging import (
    DENSE,
    PRUNED,
    BranchSwitch,
    DualBatchNorm,
    MaskedConv2d,
    dual_norm_factory,
    masked_conv_factory,
    prunable_convolutions,
    update_masks,
)


def self_damaging_resnet(width: int = 4):
    switch = BranchSwitch()
    net = build_resnet("resnet18", width=width, conv=masked_conv_factory(switch),
                       norm=dual_norm_factory(nn.BatchNorm2d, switch))
    return net, switch


def test_every_convolution_is_prunable_including_stem_and_downsample():
    net, _ = self_damaging_resnet()
    convs = prunable_convolutions(net)
    assert not [m for m in net.modules() if type(m) is nn.Conv2d]
    # ResNet-18: stem 1 + 8 blocks x 2 + 3 downsample 1x1 convolutions.
    assert len(convs) == 20
    assert sum(1 for c in convs if c.kernel_size == (1, 1)) == 3
    # Every batch norm is one of the two copies of a DualBatchNorm.
    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm)]
    assert sum(1 for m in net.modules() if isinstance(m, nn.BatchNorm2d)) == 2 * len(duals) == 2 * 20


def sdclr_masks(weights: list[np.ndarray], ratio: float, sorted_magnitudes: np.ndarray | None = None) -> list[np.ndarray]:
    """SDCLR's Mask.magnitudePruning (prune/mask.py:50-62), transcribed in numpy.

    ``sorted_magnitudes`` may pass in np.sort(|all weights|) to sort a large network once.
    ratio * n is a float64 product there (NumPy 1.x promotes the float32 count with a Python float).
    """
    vector = np.concatenate([w.flatten() for w in weights])
    if sorted_magnitudes is None:
        sorted_magnitudes = np.sort(np.abs(vector))
    to_prune = int(np.ceil(ratio * float(vector.size)))
    threshold = sorted_magnitudes[min(to_prune, len(vector) - 1)]
    return [np.abs(w) >= threshold for w in weights]


def test_masks_equal_sdclrs_rule_on_resnet18_weights():
    # fastlt's own full-width CIFAR ResNet-18 (11,159,232 prunable weights), as initialised.
    torch.manual_seed(0)
    net, _ = self_damaging_resnet(width=64)
    convs = prunable_convolutions(net)
    weights = [c.weight.detach().numpy().copy() for c in convs]
    n = sum(w.size for w in weights)
    assert n == 11_159_232
    sorted_magnitudes = np.sort(np.abs(np.concatenate([w.flatten() for w in weights])))
    for ratio in (0.0, 0.3, 0.5, 0.9, 0.99):
        sparsity = update_masks(convs, ratio)
        expected = sdclr_masks(weights, ratio, sorted_magnitudes)
        for conv, mask in zip(convs, expected):
            assert np.array_equal(conv.mask.numpy(), mask), (ratio, conv)
        pruned = sum(int((~m).sum()) for m in expected)
        assert sparsity == pruned / n
        # Magnitudes here are distinct around the threshold: SDCLR prunes ceil(ratio * n).
        assert pruned == math.ceil(ratio * n)
        # Global, not per layer: every kept weight is at least as large as every pruned one.
        kept = np.concatenate([np.abs(w)[m] for w, m in zip(weights, expected)])
        dropped = np.concatenate([np.abs(w)[~m] for w, m in zip(weights, expected)])
        assert dropped.size == 0 or kept.min() >= dropped.max()
    assert math.floor(0.9 * n) != math.ceil(0.9 * n)  # 0.9 tells SDCLR's ceil from a floor


def test_ties_with_the_threshold_are_kept_and_the_count_rounds_up():
    switch = BranchSwitch()
    conv = MaskedConv2d(1, 1, (1, 7), bias=False, switch=switch)
    values = torch.tensor([0.5, -0.1, 0.3, -0.5, 0.2, 0.4, -0.6])  # |w| sorted: .1 .2 .3 .4 .5 .5 .6
    conv.weight.data.copy_(values.view(1, 1, 1, 7))
    # (ratio, |w| pruned): 0.5 x 7 = 3.5 rounds up to 4 (a floor would prune 3); at 0.6, ceil = 5 lands on
    # the tied .5s, which are both kept; at 0.95, ceil = 7 is capped at position 6.
    for ratio, pruned in ((0.5, {0.1, 0.2, 0.3, 0.4}), (0.6, {0.1, 0.2, 0.3, 0.4}),
                          (0.95, {0.1, 0.2, 0.3, 0.4, 0.5})):
        sparsity = update_masks([conv], ratio)
        expected = sdclr_masks([values.numpy()], ratio)[0]
        assert np.array_equal(conv.mask.view(7).numpy(), expected), ratio
        assert {round(abs(v), 1) for v, keep in zip(values.tolist(), expected) if not keep} == pruned
        assert sparsity == (~expected).sum() / 7


def test_mask_is_fixed_while_weights_move_until_the_next_update():
    net, switch = self_damaging_resnet()
    convs = prunable_convolutions(net)
    update_masks(convs, 0.5)
    before = [c.mask.clone() for c in convs]
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    switch.active = PRUNED
    for _ in range(2):
        net(torch.rand(4, 3, 8, 8)).sum().backward()
        optimizer.step()
    assert all(torch.equal(a, c.mask) for a, c in zip(before, convs))
    update_masks(convs, 0.5)
    assert not all(torch.equal(a, c.mask) for a, c in zip(before, convs))


def test_pruned_branch_computes_with_weight_times_mask():
    switch = BranchSwitch()
    conv = MaskedConv2d(3, 5, 3, padding=1, bias=False, switch=switch)
    update_masks([conv], 0.7)
    x = torch.rand(2, 3, 6, 6)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, padding=1))
    switch.active = PRUNED
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * conv.mask, padding=1))
    conv(x).sum().backward()
    assert torch.all(conv.weight.grad[conv.mask == 0] == 0)


def test_batch_norm_copies_keep_separate_statistics():
    net, switch = self_damaging_resnet()
    norms = [m for m in net.modules() if isinstance(m, DualBatchNorm)]
    x = torch.rand(4, 3, 8, 8) * 3
    switch.active = PRUNED
    with torch.no_grad():
        net(x)
    assert all(torch.all(n.copies[0].running_mean == 0) for n in norms)
    assert all(n.copies[1].num_batches_tracked == 1 for n in norms)
    switch.active = DENSE
    net(x)
    assert all(n.copies[0].num_batches_tracked == 1 and n.copies[1].num_batches_tracked == 1 for n in norms)


def test_zero_ratio_prunes_nothing():
    net, _ = self_damaging_resnet()
    assert update_masks(prunable_convolutions(net), 0.0) == 0.0
    assert all(torch.all(c.mask == 1) for c in prunable_convolutions(net))
