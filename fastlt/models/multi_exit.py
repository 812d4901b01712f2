"""SelfCon's multi-exit encoder: a ResNet trunk plus a sub-network that leaves it after one stage (docs/selfcon.md).

One image gives two feature vectors of the same size: the sub-network's and the backbone's.
The sub-network shares the trunk up to its exit and nothing after it:
  "fc"    global average pool of the exit's feature map, then Linear(exit channels, feature_dim);
  "same"  an unshared copy of the stages after the exit, as deep as the backbone's, then the pool;
  "small" the same with half the blocks per stage (at least one).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.errors import FastltError
from fastlt.models.resnet import ResNet, resnet_stage, stage_channels

SUBNETWORK_SIZES = ("fc", "same", "small")
EXIT_STAGES = (1, 2, 3)  # the sub-network leaves after layer1, layer2 or layer3


class MultiExitEncoder(nn.Module):
    """Images -> (sub-network features [B, F], backbone features [B, F]), F = backbone.feature_dim."""

    def __init__(self, backbone: ResNet, exit_after: int = 2, size: str = "fc"):
        super().__init__()
        if exit_after not in EXIT_STAGES:
            raise FastltError(f"model.exit_after: expected one of {list(EXIT_STAGES)}, got {exit_after!r}")
        if size not in SUBNETWORK_SIZES:
            raise FastltError(f"model.subnetwork: expected one of {list(SUBNETWORK_SIZES)}, got {size!r}")
        self.backbone, self.exit_after, self.size = backbone, exit_after, size
        self.feature_dim = backbone.feature_dim
        exit_channels = stage_channels(backbone.block, exit_after - 1, backbone.width)
        if size == "fc":
            self.subnetwork = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(exit_channels, self.feature_dim))
            return
        stages, in_planes = [], exit_channels
        for index in range(exit_after, 4):
            depth = backbone.stage_blocks[index] if size == "same" else max(1, backbone.stage_blocks[index] // 2)
            stages.append(resnet_stage(backbone.block, in_planes, index, backbone.width, depth))
            in_planes = stage_channels(backbone.block, index, backbone.width)
        self.subnetwork = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for module in self.subnetwork.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def to_exit(self, x: Tensor) -> Tensor:
        """The shared trunk: float images in [0, 1] -> the feature map where the sub-network leaves."""
        b = self.backbone
        x = b.stem(b.normalize(x))
        for stage in (b.layer1, b.layer2, b.layer3)[: self.exit_after]:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tapped = last = self.to_exit(x)
        b = self.backbone
        for stage in (b.layer1, b.layer2, b.layer3, b.layer4)[self.exit_after:]:
            last = stage(last)
        return self.subnetwork(tapped), torch.flatten(b.pool(last), 1)


class BackboneExit(nn.Module):
    """Linear evaluation's view of the backbone exit: images -> the backbone's features. It keeps the encoder, so an
    evaluation that also wants the sub-network exit (SelfCon's --subnet) can reach it."""

    def __init__(self, encoder: MultiExitEncoder):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder.backbone(x)


class SubnetworkExit(nn.Module):
    """Linear evaluation's view of the sub-network exit: images -> its features."""

    def __init__(self, encoder: MultiExitEncoder):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder.subnetwork(self.encoder.to_exit(x))


class EnsembleExit(nn.Module):
    """Both exits' features side by side [B, 2F]: one linear probe over them sums two linear classifiers."""

    def __init__(self, encoder: MultiExitEncoder):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = 2 * encoder.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.encoder(x), dim=1)
