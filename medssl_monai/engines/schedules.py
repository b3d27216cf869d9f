"""Optimisers with the paper's parameter groups, and per-iteration learning-rate and weight-decay schedules.

SparK's recipe: LAMB with betas (0.9, 0.95), lr = base_lr x batch / 256 with linear warm-up then cosine down
to ``final_lr_ratio`` x peak, weight decay on a cosine from 0.04 to 0.2, and no weight decay on biases,
normalisation parameters and mask tokens. The schedules are functions of the iteration alone, so a resumed
run that restores the engine's iteration restores them too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["param_groups", "build_optimizer", "cosine", "train_epochs", "IterationSchedule"]


def train_epochs(max_epochs: int, max_steps: int | None, epoch_length: int) -> int:
    """Epochs a run trains: ``max_epochs``, or ``max_steps`` optimiser steps rounded up to whole epochs (a
    length given in steps, as BYOL's 300k, on data whose epoch is ``epoch_length`` steps)."""
    if max_steps is None:
        return int(max_epochs)
    if int(max_steps) < 1 or epoch_length < 1:
        raise ValueError(f"max_steps must be positive and an epoch non-empty, got {max_steps} steps, "
                         f"{epoch_length} per epoch")
    return math.ceil(int(max_steps) / epoch_length)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with ``weight_decay``; biases, norm parameters (1D) and mask tokens without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "mask_token" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_decay": False},
    ]


def build_optimizer(
    model: nn.Module,
    name: str = "lamb",
    lr: float = 2e-4,
    weight_decay: float = 0.04,
    betas: Iterable[float] = (0.9, 0.95),
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``lamb`` (timm's, its own clipping off: the engine clips), ``lars`` (timm's; the trust ratio only on the
    decayed group, as SwAV excludes biases and norms), ``adamw``, ``adam`` or ``sgd``."""
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, max_grad_norm=None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected lamb, lars, adamw, adam or sgd")


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0) -> float:
    """Linear warm-up from 0 to ``start`` over ``warmup`` steps, then a half cosine from ``start`` to ``end``."""
    if step < warmup:
        return start * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


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
