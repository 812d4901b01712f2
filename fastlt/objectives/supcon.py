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


def supcon_from_positives(z1: Tensor, z2: Tensor, temperature: float | Tensor, groups: Tensor,
                          anchors: Tensor | None = None) -> Tensor:
    """SupCon of each of the 2B anchors [z1; z2] (or of ``anchors`` only), float32, given ``groups`` [2B]: an
    anchor's positives are the other embeddings of its group."""
    with torch.autocast(z1.device.type, enabled=False):
        logits, _ = pair_logits(z1, z2, temperature, anchors)  # self-similarity is -inf: out of the denominator
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        columns = torch.arange(logits.shape[1], device=logits.device)
        anchors = columns if anchors is None else anchors
        positive = (groups[anchors][:, None] == groups[None, :]) & (anchors[:, None] != columns[None, :])
        mean_log_prob = torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)
        return -(temperature / BASE_TEMPERATURE) * mean_log_prob


def supcon_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor, labels: Tensor | None = None,
                      anchors: Tensor | None = None) -> Tensor:
    """Supervised SupCon: an anchor's positives are every other embedding of its class, both views."""
    if labels is None:
        raise FastltError("objective supcon: needs the batch's labels (use supcon-unsupervised without labels)")
    return supcon_from_positives(z1, z2, temperature, labels.repeat(2), anchors)


def unsupervised_supcon_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor,
                                   labels: Tensor | None = None, anchors: Tensor | None = None) -> Tensor:
    """SupCon without labels: an anchor's one positive is its image's other embedding (labels unused)."""
    return supcon_from_positives(z1, z2, temperature, torch.arange(z1.shape[0], device=z1.device).repeat(2), anchors)
