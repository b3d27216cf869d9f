"""Projection and prediction heads of the joint-embedding methods (MoCo v2, BYOL, SwAV)."""

from __future__ import annotations

from torch import nn

__all__ = ["mlp_head"]


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """Linear - [BatchNorm] - ReLU - Linear: MoCo v2 (no batch norm, 2048-2048-128), BYOL (4096 / 256), SwAV
    (2048-2048-128)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=not batch_norm),
        nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )
