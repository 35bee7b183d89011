"""Learning-rate schedules shared by the Lightning modules."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L

__all__ = ["warmup_cosine"]


def warmup_cosine(trainer: L.Trainer, warmup_epochs: float) -> Callable[[int], float]:
    """A per-step factor for ``LambdaLR``: linear warm-up over ``warmup_epochs``, then cosine decay to 0 at
    the trainer's last step (``trainer.estimated_stepping_batches``)."""
    total = max(int(trainer.estimated_stepping_batches), 1)
    epochs = max(int(trainer.max_epochs or 1), 1)
    warmup = min(total - 1, round(total * warmup_epochs / epochs))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

    return factor
