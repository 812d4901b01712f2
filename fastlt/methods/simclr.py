"""SimCLR: one encoder, both views in one batch, NT-Xent."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.methods.base import ContrastiveMethod
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss


class SimCLR(ContrastiveMethod):
    """Backbone + projector trained with the contrastive loss of the recipe (InfoNCE by default).

    Both views go through the network as one batch of 2B, so batch-norm statistics are
    taken over both views, as in the reference implementations.
    """

    def __init__(
        self,
        views: SimCLRViews,
        backbone: nn.Module,
        head: nn.Module,
        contrast: ContrastiveLoss,
        boost: MemorisationBoost | None = None,
    ):
        super().__init__(views, contrast, boost)
        self.backbone = backbone
        self.head = head

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = self.head(self.backbone(torch.cat([view1, view2])))
        z1, z2 = embeddings.chunk(2)
        return self.contrast(z1, z2, labels)
