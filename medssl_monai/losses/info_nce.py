"""MoCo's InfoNCE loss: pick the positive key among the queued negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InfoNCELoss"]


class InfoNCELoss(nn.Module):
    """Cross-entropy of picking each query's positive key out of ``[key, queue]`` at ``temperature``.

    ``forward(q, k, queue)``: queries and keys (B, D), negatives (K, D), all L2-normalised; a scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
        negative = q @ queue.t()  # (B, K)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
