"""SwAV's swapped-prediction loss with online codes from Sinkhorn-Knopp."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medssl_monai.utils.distributed import world_size

__all__ = ["SwAVLoss", "sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes (B, K) from prototype scores (B, K): each row sums to 1 and, as the iterations converge,
    every prototype receives B / K of the mass. Sums are all-reduced across ranks under DDP."""
    q = torch.exp(scores.float() / epsilon).t()  # (K, B)
    total = q.sum()
    distributed = world_size() > 1
    if distributed:
        dist.all_reduce(total)
    q /= total
    k, b = q.shape[0], q.shape[1] * world_size()
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)  # mass per prototype
        if distributed:
            dist.all_reduce(rows)
        q /= rows * k
        q /= q.sum(dim=0, keepdim=True) * b  # mass per sample
    return (q * b).t()


class SwAVLoss(nn.Module):
    """Swapped prediction: the code of each global view predicted from every other view, averaged.

    Args:
        temperature: of the softmax over prototype scores.
        epsilon, iterations: of the Sinkhorn-Knopp code computation.

    ``forward(global_scores, local_scores, queue_scores=None)``: (B, K) prototype scores per global and per
    local view; ``queue_scores`` (L, K) per global view are scores of queued features that take part in
    Sinkhorn only.
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3) -> None:
        super().__init__()
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations

    def forward(self, global_scores: list[torch.Tensor], local_scores: list[torch.Tensor],
                queue_scores: list[torch.Tensor] | None = None) -> torch.Tensor:
        views = global_scores + local_scores
        loss = 0.0
        for i, scores in enumerate(global_scores):
            with torch.no_grad():
                scores = scores.detach()
                if queue_scores is not None:
                    scores = torch.cat([scores, queue_scores[i].detach()])
                codes = sinkhorn(scores, self.epsilon, self.iterations)[: len(global_scores[i])]  # (B, K)
            others = [v for j, v in enumerate(views) if j != i]
            cross_entropies = [-(codes * F.log_softmax(v / self.temperature, dim=1)).sum(dim=1).mean() for v in others]
            loss = loss + sum(cross_entropies) / len(others)
        return loss / len(global_scores)
