"""SelfCon: one augmented view, contrasted across the exits of a multi-exit encoder (docs/selfcon.md)."""
from __future__ import annotations

from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.errors import FastltError
from fastlt.methods.base import ContrastiveMethod
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.models.multi_exit import EnsembleExit, MultiExitEncoder, SubnetworkExit
from fastlt.recipe import EVAL_EXITS



class SelfCon(ContrastiveMethod):
    """Each image is augmented once; its sub-network and backbone embeddings are the loss's two "views".

    Every exit has its own head. With the supervised SupCon objective an anchor's positives
    are the other embeddings of its class at both exits; with the unsupervised one, its own
    image at the other exit. Any two-view objective, temperature schedule or BCL-I view
    strength composes with it; LoTaR and BCL-D need two augmented views and are refused.
    """

    num_views = 1

    def __init__(
        self,
        views: SimCLRViews,
        encoder: MultiExitEncoder,
        subnetwork_head: nn.Module,
        head: nn.Module,
        contrast: ContrastiveLoss,
        boost: MemorisationBoost | None = None,
    ):
        super().__init__(views, contrast, boost)
        self.encoder = encoder
        self.subnetwork_head = subnetwork_head
        self.head = head

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, view: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        subnetwork, backbone = self.encoder(view)
        return self.contrast(self.subnetwork_head(subnetwork), self.head(backbone), labels)

    def feature_extractor(self, exit: str = "backbone") -> nn.Module:
        """The backbone exit (default), the sub-network exit, or both exits' features concatenated."""
        if exit not in EVAL_EXITS:
            raise FastltError(f"eval.exit: expected one of {list(EVAL_EXITS)}, got {exit!r}")
        if exit == "sub-network":
            return SubnetworkExit(self.encoder)
        return EnsembleExit(self.encoder) if exit == "ensemble" else self.encoder.backbone
