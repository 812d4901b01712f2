"""Projection heads that map backbone features to the contrastive embedding."""
from __future__ import annotations

from typing import Callable

from torch import nn

from fastlt.errors import FastltError

NormFactory1d = Callable[[int], nn.Module]


def projector(
    in_dim: int,
    hidden_dim: int = 512,
    out_dim: int = 128,
    num_layers: int = 2,
    norm: NormFactory1d = nn.BatchNorm1d,
) -> nn.Sequential:
    """SimCLR projector: (Linear BN ReLU) x (num_layers - 1), then Linear (no bias) BN, no final ReLU.

    num_layers=2 is docs/simclr.md (and BCL's head); num_layers=3 is SDCLR's own head.
    The last linear has no bias because the batch norm after it would cancel it.
    """
    if num_layers < 1:
        raise FastltError(f"model.projector_layers: must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), norm(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers += [nn.Linear(dim, out_dim, bias=False), norm(out_dim)]
    return nn.Sequential(*layers)


def mlp_head(in_dim: int, hidden_dim: int = 512, out_dim: int = 128, num_layers: int = 2) -> nn.Sequential:
    """SupCon's and SelfCon's head: (Linear ReLU) x (num_layers - 1), then Linear; no batch norm."""
    if num_layers < 1:
        raise FastltError(f"model.projector_layers: must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def lotar_head(in_dim: int, fc_dim: int, hidden_dim: int = 128, out_dim: int = 128,
               num_layers: int = 2) -> nn.Sequential:
    """LoTaR's head: the backbone's fc Linear(in_dim, fc_dim) with bias (andrew15818/SimCLR models/resnet.py:168),
    then its projector, ``mlp_head`` (models/model.py:12-16: Linear ReLU Linear), with no nonlinearity
    between the two and no batch norm. Linear evaluation keeps the pooled features before the fc."""
    return nn.Sequential(nn.Linear(in_dim, fc_dim), *mlp_head(fc_dim, hidden_dim, out_dim, num_layers))
