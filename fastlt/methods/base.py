"""What every method gives the trainer: views, one training step, epoch hooks, eval features."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.data.loader import Batch


@dataclass(frozen=True)
class StepContext:
    """How the trainer wants a step run: the autocast region for forwards and the (scaled) backward."""

    autocast: Callable[[], AbstractContextManager]
    backward: Callable[[Tensor], None]


@dataclass(frozen=True)
class StepOutput:
    """Detached results of one step, left on the device (reading them would sync)."""

    loss: Tensor  # 0-d, the loss the method reports
    per_sample: Tensor  # [B], per-sample loss (mean of the sample's two anchors)


class ContrastiveMethod(nn.Module):
    """Base class: two views per image, a loss, one or more backward passes per step.

    Subclasses set ``self.backbone`` (images -> features, what linear evaluation keeps)
    and implement ``forward`` (the compilable part) and ``train_step``.
    """

    backbone: nn.Module

    def __init__(self, views: SimCLRViews):
        super().__init__()
        self.views = views
        self._forward = self.forward

    def enable_compile(self) -> None:
        """Route the step's forward through torch.compile (shapes are fixed, so it traces once)."""
        self._forward = torch.compile(self.forward)

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent augmentations of the batch (float [B, 3, S, S] in [0, 1])."""
        return self.views(batch.images, generator), self.views(batch.images, generator)

    def train_step(self, batch: Batch, generator: torch.Generator, context: StepContext) -> StepOutput:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (1-based); default does nothing."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after the last step of each epoch; returns extra metrics to log."""
        return {}

    def feature_extractor(self) -> nn.Module:
        """The module linear evaluation freezes: float images in [0, 1] -> features."""
        return self.backbone
