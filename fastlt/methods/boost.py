"""BCL's memorisation boost: per-sample momentum losses -> per-sample RandAugment strength.

A sample the network has memorised has a low loss; BCL augments the samples whose
momentum loss is high (typically tail classes) more strongly. The memory lives on
the device, indexed by the store's sample index, and is updated every step without a
host sync; at the end of an epoch it becomes weights in [0, 1] used for the whole
next epoch (docs/bcl.md).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlt.augment.randaugment import (
    BoostedRandAugment,
    StageDraws,
    bcl_d_magnitude,
    bcl_i_magnitude,
    runs_grouped,
)
from fastlt.data.splits import GROUP_NAMES

MAPPINGS = {"bcl-i": 1, "bcl-d": 2}  # magnitude mapping -> number of RandAugment ops per view


class BoostStage:
    """The extra stage of SimCLRViews: RandAugment driven by per-sample (weight, magnitude) pairs.

    ``draw`` takes its randomness from the view generator when the view's parameters are drawn;
    ``apply`` only computes, so it can run inside the compiled view pipeline.
    """

    def __init__(self, randaugment: BoostedRandAugment):
        self.randaugment = randaugment

    def draw(self, generator: torch.Generator, strength: Tensor | None) -> tuple[StageDraws, ...] | None:
        return None if strength is None else self.randaugment.draw(strength[:, 0], generator)

    def apply(self, images: Tensor, draws: tuple[StageDraws, ...] | None, strength: Tensor | None) -> Tensor:
        return images if draws is None else self.randaugment.apply(images, draws, strength[:, 1])

    def prefers_eager(self, device: torch.device) -> bool:
        """On the devices where the stages run grouped, computing each op only for its samples beats
        compiling the masked form (which computes every op for every sample)."""
        return runs_grouped(device)


class MemorisationBoost(nn.Module):
    """Momentum loss per sample, the weights derived from it, and the view strengths they give.

    mapping "bcl-i": one op per view, magnitude 10 + 20 w.
    mapping "bcl-d": two ops per view, magnitude 5 + 25 w U with U ~ U(0, 1) drawn once per
    sample per step and shared by both views.
    A sample's first observed loss initialises its memory (the reference's "epoch 1 = raw
    loss"; identical whenever epoch 1 visits every sample). Only visited samples enter the
    end-of-epoch statistics, so the z-score is over the training split, not the whole store.
    """

    def __init__(self, num_samples: int, mapping: str, beta: float = 0.97, sample_groups: Tensor | None = None):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown boost mapping {mapping!r}")
        self.mapping = mapping
        self.beta = beta
        self.stage = BoostStage(BoostedRandAugment(num_ops=MAPPINGS[mapping]))
        self.register_buffer("momentum_loss", torch.zeros(num_samples))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("weights", torch.zeros(num_samples))
        groups = sample_groups if sample_groups is not None else torch.full((num_samples,), -1)
        self.register_buffer("sample_groups", groups.to(torch.int8), persistent=False)

    def strengths(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        """[B, 2] (firing probability w, magnitude M) for a batch; pass the same tensor to both views."""
        weights = self.weights[indices]
        if self.mapping == "bcl-i":
            magnitudes = bcl_i_magnitude(weights)
        else:
            shared = torch.rand(weights.shape, generator=generator, device=weights.device)
            magnitudes = bcl_d_magnitude(weights, shared)
        return torch.stack([weights, magnitudes], dim=1)

    @torch.no_grad()
    def observe(self, indices: Tensor, losses: Tensor) -> None:
        """m_i = L_i on a sample's first visit, else (1 - beta) L_i + beta m_i.

        A non-finite loss never enters the memory (the trainer stops the run on it).
        """
        losses = losses.detach().float()
        finite = torch.isfinite(losses)
        seen = self.seen[indices]
        previous = self.momentum_loss[indices]
        updated = torch.where(seen, (1 - self.beta) * losses + self.beta * previous, losses)
        self.momentum_loss[indices] = torch.where(finite, updated, previous)
        self.seen[indices] = seen | finite

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """Turn momentum losses into next epoch's weights; return weight statistics for the log.

        z = (m - mean m) / std m (unbiased), w = z / max|z| / 2 + 1/2, over visited samples.
        """
        visited = self.seen
        losses = self.momentum_loss[visited]
        z = (losses - losses.mean()) / losses.std().clamp_min(1e-12)
        weights = z / z.abs().max().clamp_min(1e-12) / 2 + 0.5
        self.weights[visited] = weights
        quantiles = torch.quantile(weights, torch.tensor([0.1, 0.5, 0.9], device=weights.device))
        stats = {
            "weight_mean": weights.mean(),
            "weight_q10": quantiles[0],
            "weight_q50": quantiles[1],
            "weight_q90": quantiles[2],
            "momentum_loss_mean": losses.mean(),
        }
        groups = self.sample_groups[visited]
        for code, name in enumerate(GROUP_NAMES):
            members = groups == code
            if bool(members.any()):
                stats[f"weight_mean_{name}"] = weights[members].mean()
        return {key: round(float(value), 6) for key, value in stats.items()}
