"""ResNets with a CIFAR or ImageNet stem and the input normalisation inside the model.

The data pipeline ends at float images in [0, 1]; the model's first layer normalises
with the ImageNet mean and std (docs/simclr.md, also for CIFAR), so a
checkpoint carries everything needed to turn raw pixels into features.

Convolution and normalisation layers come from factories, so the self-damaging
encoder (masked convolutions, dual batch norm) reuses this one definition.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from fastlt.errors import FastltError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ConvFactory = Callable[..., nn.Module]
NormFactory = Callable[[int], nn.Module]


class Normalize(nn.Module):
    """Per-channel (x - mean) / std for [B, 3, H, W] float input in [0, 1]."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride, conv, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection (ResNet-50), stride on the 3x3."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride, conv, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int, conv: ConvFactory, norm: NormFactory) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 convolution and a norm (the prunable "downsample")."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(conv(in_planes, out_planes, 1, stride=stride, bias=False), norm(out_planes))


def stage_channels(block: type[BasicBlock] | type[Bottleneck], index: int, width: int) -> int:
    """Output channels of stage ``index`` (0-3) of a ResNet of this block type and width."""
    return width * 2**index * block.expansion


def resnet_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_planes: int,
    index: int,
    width: int,
    num_blocks: int,
    conv: ConvFactory = nn.Conv2d,
    norm: NormFactory = nn.BatchNorm2d,
) -> nn.Sequential:
    """Stage ``index`` (0-3): ``num_blocks`` blocks, the first one strided by 2 except in stage 0."""
    planes, blocks = width * 2**index, []
    for block_index in range(num_blocks):
        blocks.append(block(in_planes, planes, 2 if index > 0 and block_index == 0 else 1, conv, norm))
        in_planes = planes * block.expansion
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """A ResNet trunk that maps float images in [0, 1] to pooled features [B, feature_dim].

    stem "cifar": 3x3 stride-1 convolution, no max-pool (for 32x32 inputs);
    stem "imagenet": 7x7 stride-2 convolution and a 3x3 stride-2 max-pool.
    width scales every stage (64 is the standard network; smaller widths keep CPU demos fast).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        stem: str = "cifar",
        width: int = 64,
        conv: ConvFactory = nn.Conv2d,
        norm: NormFactory = nn.BatchNorm2d,
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise FastltError(f"model.stem: unknown stem {stem!r} (expected 'cifar' or 'imagenet')")
        self.normalize = Normalize()
        if stem == "cifar":
            self.stem = nn.Sequential(
                conv(3, width, 3, stride=1, padding=1, bias=False), norm(width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                conv(3, width, 7, stride=2, padding=3, bias=False),
                norm(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        self.block, self.width, self.stage_blocks = block, width, layers
        stages = []
        in_planes = width
        for index, num_blocks in enumerate(layers):
            stages.append(resnet_stage(block, in_planes, index, width, num_blocks, conv, norm))
            in_planes = stage_channels(block, index, width)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def build_resnet(
    arch: str,
    stem: str = "cifar",
    width: int = 64,
    conv: ConvFactory = nn.Conv2d,
    norm: NormFactory = nn.BatchNorm2d,
) -> ResNet:
    """Build a named ResNet ("resnet18", "resnet34", "resnet50") with the given stem and width."""
    if arch not in ARCHITECTURES:
        raise FastltError(f"model.arch: unknown architecture {arch!r} (expected one of {sorted(ARCHITECTURES)})")
    if width < 1:
        raise FastltError(f"model.width: must be positive, got {width}")
    block, layers = ARCHITECTURES[arch]
    return ResNet(block, layers, stem=stem, width=width, conv=conv, norm=norm)
