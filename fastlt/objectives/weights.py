"""Per-sample weights on the contrastive loss, computed from the embeddings of the step."""
from __future__ import annotations

from torch import Tensor


def lotar_weights(z1: Tensor, z2: Tensor, sign: float = -1.0) -> Tensor:
    """LoTaR's positive-distance weights [B] (docs/lotar.md): w_i = 1 + sign * (d_i - mean d) / (max d - min d).

    d_i = ||z1_i - z2_i||_2 on the raw (not normalised) projector outputs (andrew15818/SimCLR
    train.py:97). The weights are not detached: the reference lets the gradient flow through them.
    sign = -1 is what its code computes (train.py:81: pairs far apart weigh less); +1 is its README's
    formula.
    """
    distances = (z1.float() - z2.float()).norm(dim=1)
    spread = (distances.max() - distances.min()).clamp_min(1e-12)
    return 1 + sign * (distances - distances.mean()) / spread
