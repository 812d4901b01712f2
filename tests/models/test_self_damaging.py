"""Self-damaging encoder: global magnitude masks and separate batch-norm copies per branch."""
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


def test_mask_keeps_the_largest_magnitudes_globally():
    net, _ = self_damaging_resnet()
    convs = prunable_convolutions(net)
    sparsity = update_masks(convs, 0.9)
    weights = torch.cat([c.weight.detach().abs().flatten() for c in convs])
    masks = torch.cat([c.mask.flatten() for c in convs])
    n = weights.numel()
    assert abs(sparsity - 0.9) <= 1 / n
    assert masks.dtype == torch.bool and abs((1 - masks.float().mean().item()) - 0.9) <= 1 / n
    # Global, not per layer: every kept weight is at least as large as every pruned one.
    assert weights[masks.bool()].min() >= weights[~masks.bool()].max()
    # Independent threshold: numpy's sorted magnitudes.
    sorted_magnitudes = weights.sort().values
    assert torch.equal(masks.bool(), weights >= sorted_magnitudes[int(0.9 * n)])


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
