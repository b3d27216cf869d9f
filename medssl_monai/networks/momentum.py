"""Momentum (EMA) copies of a network, and the collectives the methods need under torch.distributed.

A momentum copy is a frozen deep copy whose weights follow the online network by
``target = m * target + (1 - m) * online``; its parameters never receive gradients, and they live in the
method's state_dict, so checkpoints and resumes carry them.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["momentum_copy", "ema_update_", "gather", "world_size"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to be updated by :func:`ema_update_`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for the parameters (the target's batch-norm
    statistics follow its own forward passes, as in MoCo and BYOL)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)


def world_size() -> int:
    """Processes in the torch.distributed group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0, in rank order (no gradient); ``x`` alone in one
    process."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
