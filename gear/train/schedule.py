"""Learning-rate schedule shared by the training loops: linear warm-up, then constant or cosine.

A pure function of the step, so a resumed run sets exactly the learning rate an uninterrupted run
would (nothing to checkpoint)."""
from __future__ import annotations

import math

DECAYS = ("constant", "cosine")


def lr_at(step: int, steps: int, peak: float, warmup: int = 0, decay: str = "constant") -> float:
    """Learning rate of 0-based `step` out of `steps`: `peak * (step + 1) / warmup` during the
    warm-up, then `peak` (constant) or a cosine from `peak` down to 0 at the last step (cosine)."""
    if decay not in DECAYS:
        raise ValueError(f"lr decay {decay!r}: must be one of {', '.join(DECAYS)}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if decay == "constant":
        return peak
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
