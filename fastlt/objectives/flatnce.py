"""FlatNCE: InfoNCE's value with a gradient that does not vanish at small batch (docs/flatnce.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlt.objectives.infonce import pair_logits


def flat_nce_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor, labels: Tensor | None = None) -> Tensor:
    """FlatNCE of each of the 2B anchors [z1; z2], float32 [2B] (labels are not used).

    Per anchor i with positive p: l_ij = (s_ij - s_ip) / tau over its negatives j,
    v_i = logsumexp_j l_ij, and the loss is exp(v_i - sg(v_i)) - 1 + sg(InfoNCE_i). Its value
    is InfoNCE_i (= softplus(v_i)), so BCL's memory and the log see InfoNCE; its gradient is
    sum_j softmax_j(l_i) * grad (s_ij - s_ip) / tau, free of InfoNCE's 1 / (1 + exp(-v_i)) factor.
    """
    with torch.autocast(z1.device.type, enabled=False):
        logits, positives = pair_logits(z1, z2, temperature)
        relative = logits - logits.gather(1, positives.unsqueeze(1))
        batch = logits.shape[0] // 2  # anchor i's positive is i + B (mod 2B): the identity rolled by B
        is_positive = torch.eye(2 * batch, dtype=torch.bool, device=logits.device).roll(batch, dims=1)
        v = torch.logsumexp(relative.masked_fill(is_positive, float("-inf")), dim=1)
        return torch.exp(v - v.detach()) - 1 + F.softplus(v).detach()
