"""BYOL: an online network predicts a slowly moving target network's projection of another view.

Grill et al. 2020. Online path: backbone, projector (4096 hidden, 256 out, with batch norm) and predictor of
the same shape; target path: momentum copies of backbone and projector, updated by EMA with tau rising from
0.996 to 1 on a cosine over the whole run. The loss is the symmetric negative cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl_monai.engines.schedules import cosine
from medssl_monai.networks.base import JointEmbeddingMethod
from medssl_monai.networks.heads import mlp_head
from medssl_monai.networks.momentum import ema_update_, momentum_copy

__all__ = ["BYOL", "byol_loss"]


def byol_loss(p0: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity: predictions p0, p1 (B, D) against the other view's targets."""
    return -0.5 * (F.cosine_similarity(p0, z1.detach(), dim=1).mean() +
                   F.cosine_similarity(p1, z0.detach(), dim=1).mean())


class BYOL(JointEmbeddingMethod):
    """BYOL on a torchvision ResNet.

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 (CT as is) or 3.
        hidden_dim, out_dim: projector and predictor widths (4096 and 256).
        tau: EMA coefficient at the first and the last iteration.
        total_iterations: length of the run, over which tau follows its cosine.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        tau: tuple[float, float] = (0.996, 1.0),
        total_iterations: int = 300_000,
    ) -> None:
        super().__init__(backbone, in_channels)
        self.projector = mlp_head(self.backbone.feature_dim, hidden_dim, out_dim)
        self.predictor = mlp_head(out_dim, hidden_dim, out_dim)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)
        self.tau, self.total_iterations = tuple(tau), total_iterations

    def tau_at(self, step: int) -> float:
        """The EMA coefficient at ``step``."""
        return cosine(step, self.total_iterations, self.tau[0], self.tau[1])

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """views: two (B, C, H, W) augmentations of the same images."""
        tau = self.tau_at(self.advance())
        if self.training:
            ema_update_(self.target_backbone, self.backbone, tau)
            ema_update_(self.target_projector, self.projector, tau)
        b = len(views[0])
        both = torch.cat(views[:2])  # (2B, C, H, W): one pass, batch norm over both views
        p0, p1 = self.predictor(self.projector(self.backbone(both))).split(b)
        with torch.no_grad():
            z0, z1 = self.target_projector(self.target_backbone(both)).split(b)
        return {"loss": byol_loss(p0, p1, z0, z1), "tau": torch.tensor(tau)}
