"""Beta-annealing schedules of the KL weight (plain Python: config validation reads the names
without importing torch).

``constant``; ``linear`` (0 -> 1 over ``warmup_epochs``); ``sigmoid`` (logistic ramp centred at
``warmup_epochs / 2``); ``cyclical`` (linear ramp over the first half of every
``cycle_epochs``, then flat; Fu et al. 2019).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")


def kl_factor(schedule: str, progress: float, warmup_epochs: float, cycle_epochs: float) -> float:
    """The fraction of the KL weight in effect after ``progress`` epochs."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return min(1.0, progress / warmup_epochs)
    if schedule == "sigmoid":
        return 1.0 / (1.0 + math.exp(-10.0 * (progress / warmup_epochs - 0.5)))
    if schedule == "cyclical":
        phase = (progress % cycle_epochs) / cycle_epochs
        return min(1.0, 2.0 * phase)
    raise ValueError(f"loss.kl_schedule={schedule!r} is not one of {SCHEDULES}")
