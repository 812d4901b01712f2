"""The objective, temperature and sample-weight axes of a two-view method, as one module.

A method hands it the two views' embeddings and gets (loss, per-sample loss). In a run of
several processes (``shard_sizes`` set for the batch) the embeddings of every rank are gathered
first, so the loss and the per-sample losses are those of the global batch. The
temperature is a 0-d buffer on the model's device, refilled once per epoch by a schedule,
so a compiled step sees a new value without recompiling. BCL's memory gets the
objective's per-sample loss before any sample weighting.

Two choices reshape which anchors count, for every objective:
- ``contrast_mode = "one"`` (SupContrast losses.py:60-62): only the first view's (SelfCon: the
  sub-network exit's) embeddings are anchors; the second view's are still contrasted against.
  An anchor's row is the same as in mode "all", so the objective's first B per-anchor losses
  are exactly mode one's, and a sample's loss (BCL's memory) is its one anchor's.
- Embeddings [B, V, D] (SelfCon-M: V augmented views of each image at each of two exits) are
  V rows per image, each row its own sample, as SelfCon's main_represent.py:293-303 stacks them;
  a sample's loss is the mean over its V rows.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.methods.gather import gather_rows
from fastlt.objectives import OBJECTIVES
from fastlt.objectives.infonce import per_sample_of
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
        if self.shard_sizes is not None:
            z1, z2 = gather_rows(z1, self.shard_sizes), gather_rows(z2, self.shard_sizes)
            labels = gather_rows(labels, self.shard_sizes) if labels is not None else None
        rows_per_sample = 1
        if z1.ndim == 3:  # [B, V, D] -> [B V, D], image-major, so the gathered order stays the samples' order
            rows_per_sample = z1.shape[1]
            z1, z2 = z1.flatten(0, 1), z2.flatten(0, 1)
            labels = labels.repeat_interleave(rows_per_sample) if labels is not None else None
        per_anchor = self.objective(z1, z2, self.temperature, labels)
        if self.contrast_mode == "one":
            # the first view's anchors stand for both halves, so the mean, the LoTaR weighting and the
            # per-sample loss (the mean of a row's two halves) see exactly those anchors
            per_anchor = per_anchor[: z1.shape[0]].repeat(2)
        if self.sample_weights == "lotar":
            loss = (per_anchor * lotar_weights(z1, z2, self.lotar_sign).repeat(2)).mean()
        else:
            loss = per_anchor.mean()
        return loss, per_sample_of(per_anchor).view(-1, rows_per_sample).mean(1)
