"""BYOL: an online network predicts a slowly moving target network's projection of another view.

Grill et al. 2020. Online path: backbone, projector (4096 hidden, 256 out, with batch norm) and predictor of
the same shape; target path: momentum copies of backbone and projector, updated by EMA with tau rising from
0.996 to 1 on a cosine over the whole run. The loss is the symmetric negative cosine similarity.
"""

from __future__ import annotations

import torch

from medssl_monai.losses.negative_cosine import SymmetricNegativeCosineLoss
from medssl_monai.networks.base import JointEmbeddingMethod
from medssl_monai.networks.heads import mlp_head
from medssl_monai.networks.momentum import momentum_copy
from medssl_monai.utils.schedules import cosine

__all__ = ["BYOL"]


class BYOL(JointEmbeddingMethod):
    """BYOL on torchvision's ResNet (slices) or MONAI's (volumes).

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 (CT as is) or 3.
        spatial_dims: 2 (slices, torchvision's ResNet) or 3 (volumes, MONAI's ``ResNet``, one channel).
        hidden_dim, out_dim: projector and predictor widths (4096 and 256).
        tau: EMA coefficient at the first and the last iteration.
        total_iterations: length of the run, over which tau follows its cosine.
        batch_views: both views through each network in one pass (batch norm over both), else one pass per
            view as the original BYOL computes them (batch norm per view).
    """

    momentum_pairs = (("target_backbone", "backbone"), ("target_projector", "projector"))

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        spatial_dims: int = 2,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        tau: tuple[float, float] = (0.996, 1.0),
        total_iterations: int = 300_000,
        batch_views: bool = True,
    ) -> None:
        super().__init__(backbone, in_channels, spatial_dims, batch_views)
        self.projector = mlp_head(self.backbone.feature_dim, hidden_dim, out_dim)
        self.predictor = mlp_head(out_dim, hidden_dim, out_dim)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)
        self.tau, self.total_iterations = tuple(tau), total_iterations
        self.criterion = SymmetricNegativeCosineLoss()

    def momentum_at(self, step: int) -> float:
        """tau at ``step``: a cosine from ``tau[0]`` to ``tau[1]`` over ``total_iterations``."""
        return cosine(step, self.total_iterations, self.tau[0], self.tau[1])

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """views: two (B, C, *S) augmentations of the same images."""
        tau = self.momentum_at(self.advance())  # the coefficient that made the current target
        p0, p1 = self.per_view(lambda x: self.predictor(self.projector(self.backbone(x))), views[:2])  # (B, D) each
        with torch.no_grad():
            z0, z1 = self.per_view(lambda x: self.target_projector(self.target_backbone(x)), views[:2])
        return {"loss": self.criterion(p0, p1, z0, z1), "tau": torch.tensor(tau)}
