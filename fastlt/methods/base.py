"""What every method gives the trainer: views, one training step, epoch hooks, eval features."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from fastlt.augment.views import SimCLRViews
from fastlt.data.loader import Batch
from fastlt.errors import FastltError
from fastlt.methods.boost import MemorisationBoost
from fastlt.methods.contrast import ContrastiveLoss
from fastlt.methods.gather import gather_rows
from fastlt.notices import quiet_cuda_home_probe


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
    """Base class: ``num_views`` views per image, a loss, one or more backward passes per step.

    Subclasses set ``self.backbone`` (images -> features, what linear evaluation keeps)
    and implement ``forward``, the compilable part: views and labels -> (loss, per-sample
    loss). ``step`` runs it with one backward; a method with more passes overrides it.
    Two axes live here: the view strength (with a MemorisationBoost the views get
    per-sample RandAugment strength and every step's per-sample losses feed it) and the
    loss (``contrast``: objective, temperature schedule, sample weights).
    """

    backbone: nn.Module
    num_views: int = 2  # augmented views per image: two for the two-view methods, one for multi-exit
    has_unused_parameters: bool = False  # a backward that leaves some parameters out (SDCLR's reference iteration)

    def __init__(self, views: SimCLRViews, contrast: ContrastiveLoss, boost: MemorisationBoost | None = None):
        super().__init__()
        self.views = views
        self.contrast = contrast
        self.boost = boost
        self.memory_format = torch.channels_last
        self._forward = self.forward
        self._ddp: nn.Module | None = None  # not a submodule: state dicts keep the method's own keys

    def set_memory_format(self, name: str) -> None:
        """Put weights in this layout ("channels_last" or "contiguous"); views are converted to it too."""
        self.memory_format = torch.channels_last if name == "channels_last" else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def enable_compile(self, mode: str | None = None) -> None:
        """Route the step's forward through torch.compile, one static graph per batch shape.

        An epoch has at most two shapes (full batches and the last one), so each graph is
        compiled at most twice and both stay cached; static graphs are the fastest kind.
        ``mode``: torch.compile's (None: the default; "max-autotune" adds CUDA graphs).
        """
        quiet_cuda_home_probe()
        object.__setattr__(self, "_forward", torch.compile(self._forward, dynamic=False, mode=mode))  # may be DDP

    def enable_distributed(self, device: torch.device) -> None:
        """Run the forwards through DistributedDataParallel (call before ``enable_compile``), so backward
        passes average the gradients over the processes of the joined group.

        Buffers are not broadcast before each forward: the masks, BCL's memory and the temperature are
        equal on every rank by construction (same weights, gathered per-sample losses, same schedule),
        and each rank's batch-norm statistics are its own share's, rank 0's being the ones it saves.
        """
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(self, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=self.has_unused_parameters, broadcast_buffers=False)
        object.__setattr__(self, "_ddp", ddp)  # plain attributes: registering them would make a module cycle
        object.__setattr__(self, "_forward", ddp)

    def settle_gradient_buckets(self, shard_sizes: tuple[int, ...], rank: int, context: StepContext) -> None:
        """One throwaway step on blank views before a several-process run's first real step; it leaves
        the weights, buffers and gradients as they were.

        DDP all-reduces the first backward after it starts in one bucket and every later one in buckets
        laid out in the order the gradients became ready. With three processes or more the sums depend on
        that layout (float addition is not associative), so a resumed run, whose first step is a first
        again, would leave the run it continues after one step. After this step every real step is a
        later one, in a fresh run and a resumed one alike. ``shard_sizes``: every rank's share of a
        global batch (the real first step's shapes, so a compiled forward compiles once).
        """
        if self._ddp is None:
            return
        kept = {name: value.clone() for name, value in self.state_dict().items()}
        share, size, device = shard_sizes[rank], self.views.config.size, next(self.parameters()).device
        blank = torch.zeros(share, 3, size, size, device=device).contiguous(memory_format=self.memory_format)
        self.contrast.shard_sizes = shard_sizes
        self.step((blank,) * self.num_views, torch.zeros(share, dtype=torch.long, device=device), context)
        self.zero_grad(set_to_none=True)
        self.load_state_dict(kept)

    def sync_later(self) -> AbstractContextManager:
        """Backward passes in this context keep their gradients local, to be averaged with the next synced
        one (DDP's no_sync); a no-op in one process."""
        return self._ddp.no_sync() if self._ddp is not None else nullcontext()

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, ...]:
        """``num_views`` independent augmentations of the batch (float [B, 3, S, S] in [0, 1]).

        Per-sample boost strengths are drawn once and shared by the views.
        """
        strength = self.boost.strengths(batch.indices, generator) if self.boost is not None else None
        views = self.views.many(batch.images, generator, self.num_views, strength)
        return tuple(view.contiguous(memory_format=self.memory_format) for view in views)

    def train_step(self, batch: Batch, generator: torch.Generator, context: StepContext) -> StepOutput:
        """Views, the method's forwards and backwards, the boost memory update; the trainer then steps."""
        self.contrast.shard_sizes = batch.shard_sizes  # several processes: the loss of the global batch
        output = self.step(self.make_views(batch, generator), batch.labels, context)
        if self.boost is not None:  # every rank updates the whole memory from every rank's samples
            indices = batch.indices if batch.shard_sizes is None else gather_rows(batch.indices, batch.shard_sizes)
            self.boost.observe(indices, output.per_sample)
        return output

    def step(self, views: tuple[Tensor, ...], labels: Tensor, context: StepContext) -> StepOutput:
        """One forward of all views (compiled when enabled) and one backward; SDCLR overrides it."""
        with context.autocast():
            loss, per_sample = self._forward(*views, labels)
        context.backward(loss)
        return StepOutput(loss.detach(), per_sample.detach())

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (1-based): sets the epoch's temperature."""
        self.contrast.set_epoch(epoch)

    def on_epoch_resume(self, epoch: int) -> None:
        """Called instead of ``on_epoch_start`` when a stopped epoch is resumed: the state the start made
        (masks, memory) came back with the checkpoint; only what is not saved is set again."""
        self.contrast.set_epoch(epoch)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after the last step of each epoch; returns extra metrics to log."""
        boost = self.boost.end_epoch() if self.boost is not None else {}
        return {"temperature": round(self.contrast.value, 6), **boost}

    def feature_extractor(self, exit: str = "backbone") -> nn.Module:
        """The module linear evaluation freezes: float images in [0, 1] -> features.

        ``exit`` picks among a multi-exit encoder's exits; single-exit methods have only "backbone".
        """
        check_single_exit(exit)
        return self.backbone


def check_single_exit(exit: str) -> None:
    if exit != "backbone":
        raise FastltError(f"eval.exit: {exit!r} needs a multi-exit encoder (SelfCon); this method has only 'backbone'")
