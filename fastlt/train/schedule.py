"""Per-iteration learning rate: linear warm-up from 0, then cosine decay to a floor."""
from __future__ import annotations

import math


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float) -> float:
    """Learning rate for 0-based optimiser step ``step`` of ``total_steps``.

    Warm-up: base_lr * (step + 1) / warmup_steps for the first warmup_steps steps (so the
    first step already moves and the last warm-up step reaches base_lr). Then cosine from
    base_lr at step warmup_steps to final_lr at the last step.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))
