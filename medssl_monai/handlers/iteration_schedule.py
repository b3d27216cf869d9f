"""Per-iteration learning rate and weight decay, set by an ignite handler from :func:`~medssl_monai.utils.cosine`.

SparK's recipe: linear warm-up then cosine down to ``final_lr_ratio`` x peak, weight decay on a cosine from
0.04 to 0.2; the groups built by :func:`~medssl_monai.optimizers.param_groups` without decay keep 0.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from medssl_monai.utils.schedules import cosine

__all__ = ["IterationSchedule"]


class IterationSchedule:
    """Set every group's lr, and the decaying groups' weight decay, at the start of each iteration.

    Args:
        optimizer: its groups may carry ``apply_decay`` (see :func:`param_groups`); others are decayed.
        total_iterations: length of the run; the cosines end there.
        peak_lr: lr after warm-up (already scaled by batch / 256 where the recipe says so).
        warmup_iterations: linear warm-up length.
        final_lr_ratio: lr at the end as a share of ``peak_lr``.
        wd_start, wd_end: weight decay at the first and the last iteration (cosine, no warm-up).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iterations: int,
        peak_lr: float,
        warmup_iterations: int = 0,
        final_lr_ratio: float = 1e-3,
        wd_start: float = 0.04,
        wd_end: float = 0.2,
    ) -> None:
        if total_iterations < 1:
            raise ValueError(f"total_iterations must be positive, got {total_iterations}")
        self.optimizer = optimizer
        self.total, self.warmup = total_iterations, min(warmup_iterations, total_iterations)
        self.peak_lr, self.final_lr = peak_lr, peak_lr * final_lr_ratio
        self.wd_start, self.wd_end = wd_start, wd_end

    def values(self, iteration: int) -> tuple[float, float]:
        """(lr, weight decay) for 0-based ``iteration``."""
        lr = cosine(iteration, self.total, self.peak_lr, self.final_lr, self.warmup)
        return lr, cosine(iteration, self.total, self.wd_start, self.wd_end)

    def __call__(self, engine: Engine) -> None:
        lr, wd = self.values(engine.state.iteration - 1)  # ignite counts from 1 inside an iteration
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_decay", True):
                group["weight_decay"] = wd

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)
