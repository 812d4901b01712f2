"""Temperature schedules, evaluated once per epoch on the host and handed to the step as a device tensor."""
from __future__ import annotations

import math


def cosine_temperature(epoch: int, tau_min: float, tau_max: float, t_max: int) -> float:
    """tau(e) = tau_min + (tau_max - tau_min) (1 + cos(pi e / t_max)) / 2 for epoch e (1-based), not clamped.

    The Temperature Schedules paper's cosine (docs/temperature.md): period 2 t_max epochs, from
    near tau_max at epoch 1 down to tau_min at e = t_max and back up at e = 2 t_max.
    """
    return tau_min + 0.5 * (tau_max - tau_min) * (1 + math.cos(math.pi * epoch / t_max))
