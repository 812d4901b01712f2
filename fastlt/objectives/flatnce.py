"""FlatNCE: InfoNCE's value with a gradient that does not vanish at small batch (docs/flatnce.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlt.objectives.infonce import pair_logits


def flat_nce_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor, labels: Tensor | None = None,
                        anchors: Tensor | None = None) -> Tensor:
    """FlatNCE of each of the 2B anchors [z1; z2] (or of ``anchors`` only), float32 (labels are not used).

    Per anchor i with positive p: l_ij = (s_ij - s_ip) / tau over its negatives j,
    v_i = logsumexp_j l_ij, and the loss is exp(v_i - sg(v_i)) - 1 + sg(InfoNCE_i). Its value
    is InfoNCE_i (= softplus(v_i)), so BCL's memory and the log see InfoNCE; its gradient is
    sum_j softmax_j(l_i) * grad (s_ij - s_ip) / tau, free of InfoNCE's 1 / (1 + exp(-v_i)) factor.
    """
    with torch.autocast(z1.device.type, enabled=False):
        logits, positives = pair_logits(z1, z2, temperature, anchors)
        relative = logits - logits.gather(1, positives.unsqueeze(1))
        columns = torch.arange(logits.shape[1], device=logits.device)
        v = torch.logsumexp(relative.masked_fill(positives[:, None] == columns[None, :], float("-inf")), dim=1)
        return torch.exp(v - v.detach()) - 1 + F.softplus(v).detach()
