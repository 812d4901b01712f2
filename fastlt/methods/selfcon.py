"""SelfCon: augmented views contrasted across the exits of a multi-exit encoder (docs/selfcon.md)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.choices import EVAL_EXITS
from fastlt.errors import FastltError
from fastlt.methods.base import ContrastiveMethod
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.models.multi_exit import BackboneExit, EnsembleExit, MultiExitEncoder, SubnetworkExit


class SelfCon(ContrastiveMethod):
    """Each image is augmented once, or twice with ``multiview``; the sub-network's and the backbone's embeddings are the
    loss's two "views".

    One view (SelfCon, SelfCon-SU): with the supervised SupCon objective an anchor's positives
    are the other embeddings of its class at both exits; with the unsupervised one, its own
    image at the other exit. Two views (SelfCon-M, SelfCon-MU, SelfCon's ``--multiview``): both
    views go through the encoder as one batch, and each (image, view) is a sample of its own
    with its two exits, as SelfCon's main_represent.py:293-303 stacks them: SelfCon-M's
    positives are the class at both exits of both views; SelfCon-MU's only the same view at
    the other exit, so the image's other view is a negative. Every exit has its own head.
    """

    def __init__(self, views: SimCLRViews, encoder: MultiExitEncoder, subnetwork_head: nn.Module, head: nn.Module,
                 contrast: ContrastiveLoss, boost: MemorisationBoost | None = None, multiview: bool = False):
        super().__init__(views, contrast, boost)
        self.num_views = 2 if multiview else 1
        self.encoder = encoder
        self.subnetwork_head = subnetwork_head
        self.head = head

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, *views_and_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(view, labels) or (view 1, view 2, labels) -> (loss, per-sample loss [B])."""
        *views, labels = views_and_labels
        subnetwork, backbone = self.encoder(torch.cat(views) if len(views) > 1 else views[0])
        sub, main = self.subnetwork_head(subnetwork), self.head(backbone)
        if len(views) > 1:  # view-major rows [V B, D] -> [B, V, D]: the loss takes each (image, view) as a sample
            sub, main = (z.unflatten(0, (len(views), -1)).transpose(0, 1) for z in (sub, main))
        return self.contrast(sub, main, labels)

    def feature_extractor(self, exit: str = "backbone") -> nn.Module:
        """The backbone exit (default), the sub-network exit, or both exits' features concatenated."""
        if exit not in EVAL_EXITS:
            raise FastltError(f"eval.exit: expected one of {list(EVAL_EXITS)}, got {exit!r}")
        if exit == "sub-network":
            return SubnetworkExit(self.encoder)
        return EnsembleExit(self.encoder) if exit == "ensemble" else BackboneExit(self.encoder)
