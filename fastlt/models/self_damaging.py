"""The self-damaging encoder of SDCLR: one set of weights, a dense and a pruned branch.

Every convolution (stem, block convolutions, 1x1 downsample) is a MaskedConv2d: the
dense branch computes with w, the pruned branch with w * mask on the same tensor, so
gradients from either branch reach the same weights. Every batch norm, head included,
is a DualBatchNorm with copy 0 for the dense branch and copy 1 for the pruned one.
Linear weights are shared. A BranchSwitch object shared by all these layers selects
the branch; torch.compile guards on it and keeps one graph per branch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DENSE, PRUNED = 0, 1


class BranchSwitch:
    """Which branch the dual layers compute: DENSE (0) or PRUNED (1)."""

    def __init__(self) -> None:
        self.active = DENSE


class MaskedConv2d(nn.Conv2d):
    """A convolution whose pruned branch uses weight * mask (mask fixed between updates)."""

    def __init__(self, *args, switch: BranchSwitch, **kwargs):
        super().__init__(*args, **kwargs)
        self.switch = switch
        # bool: 4x smaller in checkpoints than float, and recomputed from the weights every epoch anyway.
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.mask if self.switch.active == PRUNED else self.weight
        return self._conv_forward(x, weight, self.bias)


class DualBatchNorm(nn.Module):
    """Two batch norms over the same features; the switch picks copy 0 (dense) or 1 (pruned)."""

    def __init__(self, norm_type: type[nn.Module], num_features: int, switch: BranchSwitch):
        super().__init__()
        self.switch = switch
        self.copies = nn.ModuleList([norm_type(num_features), norm_type(num_features)])

    def forward(self, x: Tensor) -> Tensor:
        return self.copies[self.switch.active](x)


def masked_conv_factory(switch: BranchSwitch):
    """A conv factory for build_resnet that makes MaskedConv2d layers on this switch."""
    return lambda *args, **kwargs: MaskedConv2d(*args, switch=switch, **kwargs)


def dual_norm_factory(norm_type: type[nn.Module], switch: BranchSwitch):
    """A norm factory for build_resnet / projector that makes DualBatchNorm layers on this switch."""
    return lambda num_features: DualBatchNorm(norm_type, num_features, switch)


def prunable_convolutions(module: nn.Module) -> list[MaskedConv2d]:
    """All masked convolutions of a network, in module order."""
    return [m for m in module.modules() if isinstance(m, MaskedConv2d)]


@torch.no_grad()
def update_masks(convolutions: list[MaskedConv2d], ratio: float) -> float:
    """Global magnitude pruning as SDCLR computes it; set every mask and return the sparsity.

    Over the n prunable weights, the threshold is the |w| at 0-based position
    k = min(ceil(ratio * n), n - 1) of the sorted magnitudes, and a weight is kept where
    |w| >= threshold (SDCLR prune/mask.py:50-62). So exactly ceil(ratio * n) weights are
    pruned when the magnitudes are distinct, and every weight tied with the threshold is
    kept. ``ratio * n`` is a float64 product, as NumPy 1.x (SDCLR's) promotes it. kthvalue
    picks the same element as the sort without sorting; torch.quantile is not an option,
    as it refuses more than 16M elements (ResNet-50 has 23.5M convolution weights).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    magnitudes = torch.cat([conv.weight.detach().abs().flatten().float() for conv in convolutions])
    count = magnitudes.numel()
    position = min(math.ceil(ratio * count), count - 1)
    threshold = magnitudes.kthvalue(position + 1).values
    for conv in convolutions:
        conv.mask.copy_(conv.weight.detach().abs() >= threshold)
    return float((magnitudes < threshold).sum()) / count


def mask_sparsity(convolutions: list[MaskedConv2d]) -> float:
    """The fraction of prunable weights the current masks drop (what ``update_masks`` returned for them)."""
    dropped = sum(int((~conv.mask).sum()) for conv in convolutions)
    return dropped / sum(conv.mask.numel() for conv in convolutions)
