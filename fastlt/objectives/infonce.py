"""InfoNCE / NT-Xent over two views, returning the per-sample losses BCL needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """NT-Xent of REFERENCE.md section 1 for embeddings z1, z2 of shape [B, D].

    Each of the 2B embeddings is an anchor; its positive is the other view of the same
    image and its negatives are the other 2B - 2 embeddings. Computed in float32 even
    under autocast. temperature may be a 0-d tensor so a schedule does not recompile.

    Returns (mean over the 2B anchors, per-sample loss [B] = mean of the sample's two anchors).
    """
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.arange(2 * batch, device=z.device).roll(batch)
    per_anchor = F.cross_entropy(logits, positives, reduction="none")
    per_sample = (per_anchor[:batch] + per_anchor[batch:]) / 2
    return per_anchor.mean(), per_sample
