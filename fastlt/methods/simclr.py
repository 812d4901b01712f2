"""SimCLR: one encoder, two views, NT-Xent (or the recipe's objective)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.methods.base import ContrastiveMethod
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss


class SimCLR(ContrastiveMethod):
    """Backbone + projector trained with the contrastive loss of the recipe (InfoNCE by default).

    By default both views go through the network as one batch of 2B, so batch-norm
    statistics are taken over both views, as in SDCLR's, BCL's and TS's code. With
    ``separate_views`` each view has its own forward, so each batch norm normalises a view
    with that view's statistics and updates its running statistics twice a step, view 1
    first (``method.view_forward = "separate"``, LoTaR's train.py:95-96). Both forwards run
    inside the one (compiled, DDP-wrapped) ``forward``, so nothing else changes.
    """

    def __init__(
        self,
        views: SimCLRViews,
        backbone: nn.Module,
        head: nn.Module,
        contrast: ContrastiveLoss,
        boost: MemorisationBoost | None = None,
        separate_views: bool = False,
    ):
        super().__init__(views, contrast, boost)
        self.backbone = backbone
        self.head = head
        self.separate_views = separate_views

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.separate_views:
            z1, z2 = self.head(self.backbone(view1)), self.head(self.backbone(view2))
        else:
            z1, z2 = self.head(self.backbone(torch.cat([view1, view2]))).chunk(2)
        return self.contrast(z1, z2, labels)
