"""InfoNCE / NT-Xent over two views, per anchor, so sample weights and BCL's memory can use it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pair_logits(z1: Tensor, z2: Tensor, temperature: float | Tensor,
                anchors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cosine similarities / tau of the anchors against all 2B embeddings [z1; z2], self-similarity -inf, float32.

    ``anchors`` are row indices into [z1; z2] (all 2B rows when None): a process of a several-process run
    computes only its own anchors' rows against the gathered batch. Returns (logits [A, 2B], index of each
    anchor's positive [A]). Call it with autocast disabled: under bf16 autocast the matmul would round
    every logit to about 0.004 / tau, and BCL ranks samples by the losses built from them.
    """
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    columns = torch.arange(2 * batch, device=z.device)
    rows, anchors = (z, columns) if anchors is None else (z[anchors], anchors)
    logits = (rows @ z.T / temperature).masked_fill(anchors[:, None] == columns[None, :], float("-inf"))
    return logits, (anchors + batch) % (2 * batch)


def info_nce_per_anchor(z1: Tensor, z2: Tensor, temperature: float | Tensor, labels: Tensor | None = None,
                        anchors: Tensor | None = None) -> Tensor:
    """NT-Xent (docs/simclr.md) of each of the 2B anchors [z1; z2] (or of ``anchors`` only), float32.

    An anchor's positive is the other view of its image; its negatives are the other 2B - 2
    embeddings (labels are not used). temperature may be a 0-d tensor, so a schedule does
    not recompile.
    """
    with torch.autocast(z1.device.type, enabled=False):
        logits, positives = pair_logits(z1, z2, temperature, anchors)
        return F.cross_entropy(logits, positives, reduction="none")


def per_sample_of(per_anchor: Tensor) -> Tensor:
    """[2B] per-anchor losses -> [B] per-sample losses: the mean of a sample's two anchors."""
    first, second = per_anchor.chunk(2)
    return (first + second) / 2


def info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """(mean over the 2B anchors, per-sample loss [B]) of NT-Xent for embeddings z1, z2 of shape [B, D]."""
    per_anchor = info_nce_per_anchor(z1, z2, temperature)
    return per_anchor.mean(), per_sample_of(per_anchor)
