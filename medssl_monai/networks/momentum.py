"""Momentum (EMA) copies of a network, beside the models that use them (MoCo's key encoder, BYOL's target).

A momentum copy is a frozen deep copy whose weights follow the online network by
``target = m * target + (1 - m) * online``; its parameters never receive gradients, and they live in the
method's state_dict, so checkpoints and resumes carry them. The update runs after the optimiser step, called
by the training loop (:meth:`~medssl_monai.networks.base.JointEmbeddingMethod.update_momentum`), never inside
``forward``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["momentum_copy", "ema_update_"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to be updated by :func:`ema_update_`."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module | Sequence[nn.Module], online: nn.Module | Sequence[nn.Module],
                momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for the parameters of each target module and
    its online module, in one foreach pass (the targets' batch-norm statistics follow their own forward passes,
    as in MoCo and BYOL)."""
    targets = [target] if isinstance(target, nn.Module) else list(target)
    onlines = [online] if isinstance(online, nn.Module) else list(online)
    t = [p for m in targets for p in m.parameters()]
    o = [p.detach() for m in onlines for p in m.parameters()]
    if len(t) != len(o):
        raise ValueError(f"momentum update of {len(t)} target parameters from {len(o)} online parameters")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, o, alpha=1.0 - momentum)
