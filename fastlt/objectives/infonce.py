"""InfoNCE / NT-Xent over two views, returning the per-sample losses BCL needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """NT-Xent (docs/simclr.md) for embeddings z1, z2 of shape [B, D].

    Each of the 2B embeddings is an anchor; its positive is the other view of the same
    image and its negatives are the other 2B - 2 embeddings. The similarities and the
    cross-entropy run in float32 with autocast disabled: under bf16 autocast a matmul would
    round every logit to about 0.004 / tau, and BCL ranks samples by these losses.
    temperature may be a 0-d tensor so a schedule does not recompile.

    Returns (mean over the 2B anchors, per-sample loss [B] = mean of the sample's two anchors).
    """
    batch = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / temperature
        logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
        positives = torch.arange(2 * batch, device=z.device).roll(batch)
        per_anchor = F.cross_entropy(logits, positives, reduction="none")
    per_sample = (per_anchor[:batch] + per_anchor[batch:]) / 2
    return per_anchor.mean(), per_sample
