"""Optimisers with the paper's parameter groups: pre-training (LAMB, LARS, SGD, Adam(W)) and fine-tuning.

SparK's recipe: LAMB with betas (0.9, 0.95), lr = base_lr x batch / 256, and no weight decay on biases,
normalisation parameters and mask tokens. Fine-tuning: Adam (the reference study's downstream optimiser)
with an optional smaller learning rate for the pre-trained backbone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from medssl_monai.networks.backbones import split_backbone_head
from medssl_monai.utils.options import as_bool

__all__ = ["param_groups", "build_optimizer", "finetune_optimizer"]


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
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """``lamb`` (timm's, its own clipping off: the engine clips), ``lars`` (timm's; the trust ratio only on the
    decayed group, as SwAV excludes biases and norms), ``adamw``, ``adam`` or ``sgd``; ``foreach``: their
    multi-tensor update (``None``: each library's default, which is on GPUs only)."""
    groups = param_groups(model, weight_decay)
    foreach = None if foreach is None else as_bool(foreach, "foreach")
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, max_grad_norm=None,
                    foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    raise ValueError(f"unknown optimizer {name!r}; expected lamb, lars, adamw, adam or sgd")


def finetune_optimizer(network: nn.Module, lr: float = 1e-4, weight_decay: float = 5e-4,
                       backbone_lr_factor: float = 1.0) -> torch.optim.Adam:
    """Adam (the reference study's downstream optimiser) with the backbone at ``lr * backbone_lr_factor``."""
    backbone, head = split_backbone_head(network)
    return torch.optim.Adam([{"params": backbone, "lr": lr * backbone_lr_factor}, {"params": head, "lr": lr}],
                            lr=lr, weight_decay=weight_decay)
