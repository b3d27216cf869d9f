"""BYOL's loss: the symmetric negative cosine similarity of predictions and the other view's targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SymmetricNegativeCosineLoss"]


class SymmetricNegativeCosineLoss(nn.Module):
    """``-(cos(p0, z1) + cos(p1, z0)) / 2``, averaged over the batch; the targets get no gradient.

    ``forward(p0, p1, z0, z1)``: predictions of views 0 and 1 and targets of views 0 and 1, each (B, D).
    """

    def forward(self, p0: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return -0.5 * (F.cosine_similarity(p0, z1.detach(), dim=1).mean() +
                       F.cosine_similarity(p1, z0.detach(), dim=1).mean())
