"""Supervised contrastive loss (SupCon), contrast mode "all", and its unsupervised variant (docs/supcon.md).

Every embedding of every view is an anchor; an anchor's positives are the other embeddings
of its class (supervised) or of its own image (unsupervised), its denominator every other
embedding. The loss carries SupCon's factor tau / 0.07, so the tau of a recipe changes the
loss scale exactly as it does in the reference code; the unsupervised variant is NT-Xent
times that factor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastlt.errors import FastltError
from fastlt.objectives.infonce import pair_logits

BASE_TEMPERATURE = 0.07  # SupCon's base_temperature: the loss is scaled by tau / 0.07


def supcon_from_positives(z1: Tensor, z2: Tensor, temperature: float | Tensor, same: Tensor) -> Tensor:
    """SupCon per anchor [2B] of embeddings [z1; z2] given ``same`` [2B, 2B]: True where j is a positive of i.

    The diagonal of ``same`` is ignored (an anchor is never its own positive).
    """
    with torch.autocast(z1.device.type, enabled=False):
        logits, _ = pair_logits(z1, z2, temperature)  # self-similarity is -inf, so it leaves the denominator
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        positive = same & ~eye
        mean_log_prob = torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)
        return -(temperature / BASE_TEMPERATURE) * mean_log_prob


def supcon_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor, labels: Tensor | None = None) -> Tensor:
    """Supervised SupCon: an anchor's positives are every other embedding of its class, both views."""
    if labels is None:
        raise FastltError("objective supcon: needs the batch's labels (use supcon-unsupervised without labels)")
    both = labels.repeat(2)
    return supcon_from_positives(z1, z2, temperature, both[:, None] == both[None, :])


def unsupervised_supcon_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor,
                                   labels: Tensor | None = None) -> Tensor:
    """SupCon without labels: an anchor's one positive is its image's other embedding (labels unused)."""
    image = torch.arange(z1.shape[0], device=z1.device).repeat(2)
    return supcon_from_positives(z1, z2, temperature, image[:, None] == image[None, :])
