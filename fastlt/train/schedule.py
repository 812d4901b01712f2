"""Per-iteration learning rate: the reference repositories' linear warm-up from 0, then cosine decay to a floor.

Every reference drives a ``LambdaLR`` over the same ``cosine_annealing`` function (BCL utils.py:50,
SDCLR and TS train_simCLR.py, LoTaR train.py:70, FlatCLR optimizer/cos_anneal.py:3); they differ
only in whether ``scheduler.step()`` runs before the optimiser step (SDCLR, BCL, TS: step i runs at
the schedule's position i + 1) or after it (LoTaR, FlatCLR: step i runs at position i, so the first
step is at lr 0). ``offset`` is that difference (docs/simclr.md).
"""
from __future__ import annotations

import math

def peak_lr(lr: float, batch_size: int, scaling: str) -> float:
    """The schedule's peak from a recipe's ``optim.lr``: as it is ("none", what every reference's code passes), or
    scaled with the batch (global, all processes): "linear" lr x batch / 256 (SimCLR's rule, the one FlatCLR's
    default 0.6 = 0.3 x 512 / 256 states) or "sqrt" lr x sqrt(batch) (the rule FlatCLR's README recommends for small
    batches: 0.075 x sqrt(512) = 1.70)."""
    if scaling == "linear":
        return lr * batch_size / 256
    if scaling == "sqrt":
        return lr * math.sqrt(batch_size)
    return lr


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float,
                     offset: int = 1) -> float:
    """Learning rate of 0-based optimiser step ``step`` of ``total_steps``: the schedule at t = step + offset.

    t < W: base_lr * t / W; then final_lr + (base_lr - final_lr) (1 + cos(pi (t - W) / (T - W))) / 2,
    so t = W is the peak and t = T the floor (with offset 1 the last step; with offset 0 one step short of it).
    """
    t = step + offset
    if t < warmup_steps:
        return base_lr * t / warmup_steps
    progress = (t - warmup_steps) / max(total_steps - warmup_steps, 1)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
