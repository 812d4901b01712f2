"""Contrastive objectives: they see embeddings and a temperature, never data.

Each objective maps two views' embeddings [B, D] to per-anchor losses [2B] in float32, so
sample weights and BCL's per-sample memory work with every one of them.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from fastlt.objectives.flatnce import flat_nce_per_anchor
from fastlt.objectives.infonce import info_nce_per_anchor

Objective = Callable[[Tensor, Tensor, "float | Tensor"], Tensor]

OBJECTIVES: dict[str, Objective] = {
    "infonce": info_nce_per_anchor,
    "flatnce": flat_nce_per_anchor,
}
