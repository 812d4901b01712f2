"""The objective, temperature and sample-weight axes of a two-view method, as one module.

A method hands it the two views' embeddings and gets (loss, per-sample loss). In a run of
several processes (``shard_sizes`` set for the batch) the embeddings of every rank are gathered
first, and each rank computes only its own samples' anchors against the whole global batch: its
logits are [2B / N, 2B], not [2B, 2B]. Its backward is N times its part of the global loss (the
gather sums the ranks' gradients and DDP averages them, fastlt.methods.gather), while the loss it
reports and the per-sample losses it returns are the global batch's, on every rank, from the
ranks' detached per-sample values, gathered. The temperature is a 0-d buffer on the model's
device, refilled once per epoch by a schedule, so a compiled step sees a new value without
recompiling. BCL's memory gets the objective's per-sample loss before any sample weighting.

Two choices reshape which anchors count, for every objective:
- ``contrast_mode = "one"`` (SupContrast losses.py:60-62): only the first view's (SelfCon: the
  sub-network exit's) embeddings are anchors; the second view's are still contrasted against.
  An anchor's row is the same as in mode "all", so the objective computes only the first B rows
  (or computes all and they are kept), and a sample's loss (BCL's memory) is its one anchor's.
- Embeddings [B, V, D] (SelfCon-M: V augmented views of each image at each of two exits) are
  V rows per image, each row its own sample, as SelfCon's main_represent.py:293-303 stacks them;
  a sample's loss is the mean over its V rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastlt.methods.gather import gather_rows
from fastlt.objectives import LABEL_FREE, OBJECTIVES, takes_anchors
from fastlt.objectives.temperature import cosine_temperature
from fastlt.objectives.weights import lotar_weights

TEMPERATURE_SCHEDULES = ("constant", "cosine")
SAMPLE_WEIGHTS = ("none", "lotar")
CONTRAST_MODES = ("all", "one")


class ContrastiveLoss(nn.Module):
    """Two views' (or exits') embeddings and labels -> (mean loss, per-sample loss [B]), as the recipe says."""

    def __init__(self, objective: str, temperature: float, schedule: str = "constant",
                 schedule_range: tuple[float, float, int] = (0.1, 1.0, 200), sample_weights: str = "none",
                 lotar_sign: float = -1.0, contrast_mode: str = "all"):
        super().__init__()
        self.objective = OBJECTIVES[objective]
        self.takes_anchors = takes_anchors(self.objective)
        self.contrast_mode = contrast_mode
        self.schedule, self.schedule_range = schedule, schedule_range
        self.sample_weights, self.lotar_sign = sample_weights, lotar_sign
        self.value = float(temperature)
        self.register_buffer("temperature", torch.tensor(self.value), persistent=False)
        self.shard_sizes: tuple[int, ...] | None = None  # every rank's share of this batch; None in one process

    def set_epoch(self, epoch: int) -> None:
        """Set this epoch's temperature (1-based epochs); a constant one stays as it is."""
        if self.schedule == "cosine":
            self.value = cosine_temperature(epoch, *self.schedule_range)
            self.temperature.fill_(self.value)

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        labels = None if self.objective in LABEL_FREE else labels
        first, count = 0, z1.shape[0]  # this process's samples among the batch's
        if self.shard_sizes is not None:
            sizes, rank = self.shard_sizes, dist.get_rank()
            first, count = sum(sizes[:rank]), sizes[rank]
            z1, z2 = gather_rows(z1, sizes), gather_rows(z2, sizes)
            labels = gather_rows(labels, sizes) if labels is not None else None
        rows_per_sample = 1
        if z1.ndim == 3:  # [B, V, D] -> [B V, D], image-major, so the gathered order stays the samples' order
            rows_per_sample = z1.shape[1]
            z1, z2 = z1.flatten(0, 1), z2.flatten(0, 1)
            labels = labels.repeat_interleave(rows_per_sample) if labels is not None else None
        own = slice(first * rows_per_sample, (first + count) * rows_per_sample)  # this process's rows of z1 and z2
        halves = 1 if self.contrast_mode == "one" else 2  # anchors per row: its z1 embedding, and its z2 one in "all"
        per_anchor = self._per_anchor(z1, z2, labels, own, halves)  # [own z1 rows; own z2 rows] (mode one: z1's)
        weighted = per_anchor
        if self.sample_weights == "lotar":  # over the whole batch, then this process's rows
            weighted = per_anchor * lotar_weights(z1, z2, self.lotar_sign)[own].repeat(halves)
        per_sample = self._per_sample(per_anchor, halves, rows_per_sample)
        if self.shard_sizes is None:
            return weighted.mean(), per_sample
        # backward: N times this process's part of the global mean over anchors; value: the global mean, from
        # every rank's detached per-sample values (share - share.detach() is 0 and carries share's gradient)
        share = weighted.sum() * (len(self.shard_sizes) / (halves * z1.shape[0]))
        samples = torch.stack([per_sample, self._per_sample(weighted, halves, rows_per_sample)], 1)
        every = gather_rows(samples.detach(), self.shard_sizes)
        return every[:, 1].mean() + (share - share.detach()), every[:, 0]

    def _per_anchor(self, z1: Tensor, z2: Tensor, labels: Tensor | None, own: slice, halves: int) -> Tensor:
        """The objective's losses of this process's anchors, the whole batch contrasted against."""
        rows = z1.shape[0]
        if own == slice(0, rows) and halves == 2:
            return self.objective(z1, z2, self.temperature, labels)
        mine = torch.arange(own.start, own.stop, device=z1.device)
        anchors = torch.cat([mine, mine + rows]) if halves == 2 else mine
        if self.takes_anchors:
            return self.objective(z1, z2, self.temperature, labels, anchors=anchors)
        return self.objective(z1, z2, self.temperature, labels)[anchors]

    @staticmethod
    def _per_sample(per_anchor: Tensor, halves: int, rows_per_sample: int) -> Tensor:
        """Per-anchor values [halves x rows] -> per sample [samples]: the mean over its anchors."""
        return per_anchor.view(halves, -1).mean(0).view(-1, rows_per_sample).mean(1)
