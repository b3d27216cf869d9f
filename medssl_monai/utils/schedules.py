"""Schedules as pure functions of the step: a cosine with linear warm-up, and run lengths in epochs.

Functions of the iteration alone, so a resumed run that restores the engine's iteration restores every
schedule (learning rate, weight decay, BYOL's EMA coefficient) with it.
"""

from __future__ import annotations

import math

__all__ = ["cosine", "train_epochs"]


def train_epochs(max_epochs: int, max_steps: int | None, epoch_length: int) -> int:
    """Epochs a run trains: ``max_epochs``, or ``max_steps`` optimiser steps rounded up to whole epochs (a
    length given in steps, as BYOL's 300k, on data whose epoch is ``epoch_length`` steps)."""
    if max_steps is None:
        return int(max_epochs)
    if int(max_steps) < 1 or epoch_length < 1:
        raise ValueError(f"max_steps must be positive and an epoch non-empty, got {max_steps} steps, "
                         f"{epoch_length} per epoch")
    return math.ceil(int(max_steps) / epoch_length)


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0) -> float:
    """Linear warm-up from 0 to ``start`` over ``warmup`` steps, then a half cosine from ``start`` to ``end``."""
    if step < warmup:
        return start * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
