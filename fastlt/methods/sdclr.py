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
    """View 1 through the dense branch, view 2 through the pruned branch, two backward passes.

    One iteration, in this order:
      1. pruned branch on view 2 without grad -> z2 (its BN copy updates its statistics);
      2. dense branch on view 1 -> z1; L1 = loss(z1, z2); backward (L1 is the logged loss);
      3. pruned branch on view 2 with grad -> z2'; L2 = loss(z1.detach(), z2'); backward;
    then the trainer takes one optimiser step. Summing L1 and L2 with both branches live
    would give different gradients (the dense branch would also receive L2's gradient).
    The pruning mask is recomputed from the current weights at the start of every epoch.
    In several processes the first backward keeps its gradients local and the second averages
    both (each pass leaves one BN copy unused, hence ``has_unused_parameters``).
    """

    has_unused_parameters = True

    def __init__(
        self,
        views: SimCLRViews,
        backbone: nn.Module,
        head: nn.Module,
        switch: BranchSwitch,
        contrast: ContrastiveLoss,
        pruning_ratio: float,
        boost: MemorisationBoost | None = None,
    ):
        super().__init__(views, contrast, boost)
        self.backbone = backbone
        self.head = head
        self.switch = switch
        self.pruning_ratio = pruning_ratio
        self.sparsity = 0.0

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
        view1, view2 = views
        with self.sync_later():
            with context.autocast():
                self.switch.active = PRUNED
                with torch.no_grad():
                    z2 = self._forward(view2)
                self.switch.active = DENSE
                z1 = self._forward(view1)
                dense_loss, per_sample = self.contrast(z1, z2, labels)
            context.backward(dense_loss)
        with context.autocast():
            self.switch.active = PRUNED
            pruned_loss, _ = self.contrast(z1.detach(), self._forward(view2), labels)
        context.backward(pruned_loss)
        self.switch.active = DENSE
        return StepOutput(dense_loss.detach(), per_sample.detach())

    def feature_extractor(self, exit: str = "backbone") -> nn.Module:
        check_single_exit(exit)
        return DenseBranch(self.backbone, self.switch)
