"""SDCLR: contrast a dense encoder with its own magnitude-pruned twin (docs/sdclr.md)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.methods.base import ContrastiveMethod, StepContext, StepOutput, check_single_exit
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.models.self_damaging import (
    DENSE,
    PRUNED,
    BranchSwitch,
    mask_sparsity,
    prunable_convolutions,
    update_masks,
)


class DenseBranch(nn.Module):
    """The backbone with the switch held on the dense branch (BN copy 0): what linear evaluation uses."""

    def __init__(self, backbone: nn.Module, switch: BranchSwitch):
        super().__init__()
        self.backbone = backbone
        self.switch = switch

    def forward(self, x: Tensor) -> Tensor:
        self.switch.active = DENSE
        return self.backbone(x)


class SDCLR(ContrastiveMethod):
    """View 1 through the dense branch, view 2 through the pruned branch (docs/sdclr.md).

    One iteration (``forwards = 2``, the default): the pruned branch on view 2 -> z2, the dense
    branch on view 1 -> z1, L = loss(z1, z2), one backward. The dense branch gets dL/dz1 and the
    pruned branch dL/dz2: the gradients of the reference's two passes, L1 = loss(z1, sg(z2)) and
    L2 = loss(sg(z1), z2), whose values both equal L. L is the logged loss.
    ``forwards = 3`` runs the reference's iteration as it is written:
      1. pruned branch on view 2 without grad -> z2;
      2. dense branch on view 1 -> z1; L1 = loss(z1, z2); backward (L1 is the logged loss);
      3. pruned branch on view 2 with grad -> z2'; L2 = loss(z1.detach(), z2'); backward.
    Same gradients and dense statistics; the pruned branch's batch norms update their running
    statistics twice a step, as the reference's do, instead of once (nothing evaluates them).
    Either way the trainer then takes one optimiser step, and the pruning mask is recomputed from
    the current weights at the start of every epoch. In several processes the reference's first
    backward keeps its gradients local and the second averages both, each pass leaving one BN
    copy unused; the single backward uses every parameter.
    """

    def __init__(
        self,
        views: SimCLRViews,
        backbone: nn.Module,
        head: nn.Module,
        switch: BranchSwitch,
        contrast: ContrastiveLoss,
        pruning_ratio: float,
        boost: MemorisationBoost | None = None,
        forwards: int = 2,
    ):
        super().__init__(views, contrast, boost)
        if forwards not in (2, 3):
            raise ValueError(f"SDCLR: 2 or 3 forwards per step, got {forwards}")
        self.backbone = backbone
        self.head = head
        self.switch = switch
        self.pruning_ratio = pruning_ratio
        self.forwards = forwards
        self.sparsity = 0.0

    @property
    def has_unused_parameters(self) -> bool:
        """DDP's find_unused_parameters: each of the reference's two backward passes leaves a BN copy out."""
        return self.forwards == 3

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings of x on whichever branch the switch selects."""
        return self.head(self.backbone(x))

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.sparsity = update_masks(prunable_convolutions(self.backbone), self.pruning_ratio)

    def on_epoch_resume(self, epoch: int) -> None:
        super().on_epoch_resume(epoch)
        self.sparsity = mask_sparsity(prunable_convolutions(self.backbone))  # the epoch's masks came back

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {**super().on_epoch_end(epoch), "sparsity": round(self.sparsity, 6)}

    def step(self, views: tuple[Tensor, ...], labels: Tensor, context: StepContext) -> StepOutput:
        if self.forwards == 3:
            return self._reference_step(views, labels, context)
        view1, view2 = views
        with context.autocast():
            z2 = self._branch(PRUNED, view2)
            z1 = self._branch(DENSE, view1)
            loss, per_sample = self.contrast(z1, z2, labels)
        context.backward(loss)
        return StepOutput(loss.detach(), per_sample.detach())

    def _reference_step(self, views: tuple[Tensor, ...], labels: Tensor, context: StepContext) -> StepOutput:
        """The reference's three forwards and two backward passes (``forwards = 3``)."""
        view1, view2 = views
        with self.sync_later():
            with context.autocast():
                with torch.no_grad():
                    z2 = self._branch(PRUNED, view2)
                z1 = self._branch(DENSE, view1)
                dense_loss, per_sample = self.contrast(z1, z2, labels)
            context.backward(dense_loss)
        with context.autocast():
            pruned_loss, _ = self.contrast(z1.detach(), self._branch(PRUNED, view2), labels)
        context.backward(pruned_loss)
        self.switch.active = DENSE
        return StepOutput(dense_loss.detach(), per_sample.detach())

    def _branch(self, branch: int, x: Tensor) -> Tensor:
        """Embeddings of x on ``branch`` (compiled, one graph per branch, when enabled)."""
        self.switch.active = branch
        return self._forward(x)

    def feature_extractor(self, exit: str = "backbone") -> nn.Module:
        check_single_exit(exit)
        return DenseBranch(self.backbone, self.switch)
