"""SwAV: predict the cluster assignment (code) of one view from another view, with online Sinkhorn codes.

Caron et al. 2020. Backbone, MLP head (2048-2048-128 with batch norm), L2-normalised features scored against
``num_prototypes`` learnable prototypes. Codes come from the global (high-resolution) views by Sinkhorn-Knopp
(epsilon 0.05, 3 iterations) and each is predicted from every other view, local crops included, at
temperature 0.1. The prototypes get no gradient for the first ``freeze_prototypes_iterations`` iterations.
With small batches a queue of past global-view features joins the Sinkhorn step, so that the equipartition
is taken over more samples than the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medssl_monai.losses.swav_loss import SwAVLoss
from medssl_monai.networks.base import JointEmbeddingMethod
from medssl_monai.networks.heads import mlp_head

__all__ = ["SwAV"]


class SwAV(JointEmbeddingMethod):
    """SwAV with multi-crop on torchvision's ResNet (slices) or MONAI's (volumes).

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 (CT as is) or 3.
        spatial_dims: 2 (slices, torchvision's ResNet) or 3 (volumes, MONAI's ``ResNet``, one channel).
        hidden_dim, out_dim: the MLP head (2048-2048-128).
        num_prototypes: clusters (500 in the reference study).
        temperature: of the swapped prediction.
        sinkhorn_epsilon, sinkhorn_iterations: of the code computation.
        freeze_prototypes_iterations: iterations at the start during which the prototypes get no gradient.
        num_global_views: the first views of the list are the global (code-giving) crops.
        queue_length: past global-view features kept per global view for Sinkhorn (0: no queue); the queue
            takes part once it is full.
        batch_views: the views of one size through the network in one pass (batch norm over them together),
            as the original SwAV computes its multi-crop, else one pass per view.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        spatial_dims: int = 2,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_prototypes: int = 500,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_iterations: int = 313,
        num_global_views: int = 2,
        queue_length: int = 0,
        batch_views: bool = True,
    ) -> None:
        super().__init__(backbone, in_channels, spatial_dims, batch_views)
        self.head = mlp_head(self.backbone.feature_dim, hidden_dim, out_dim)
        self.prototypes = nn.Linear(out_dim, num_prototypes, bias=False)
        self.criterion = SwAVLoss(temperature, sinkhorn_epsilon, sinkhorn_iterations)
        self.freeze_prototypes_iterations, self.num_global_views = freeze_prototypes_iterations, num_global_views
        self.register_buffer("queue", torch.zeros(num_global_views, queue_length, out_dim))  # (G, L, D)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def embed(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """L2-normalised features (B, D) per view (:meth:`per_view`)."""
        return [F.normalize(z, dim=1) for z in self.per_view(lambda x: self.head(self.backbone(x)), views)]

    @torch.no_grad()
    def push(self, features: list[torch.Tensor]) -> None:
        """Put the global views' features (B, D) at the front of the queue, dropping the oldest."""
        length = self.queue.shape[1]
        new = torch.stack(features)[:, :length]  # (G, B', D)
        self.queue.copy_(torch.cat([new.to(self.queue.dtype), self.queue], dim=1)[:, :length])
        self.queue_filled.copy_((self.queue_filled + new.shape[1]).clamp(max=length))

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """views: ``num_global_views`` global crops, then any number of local crops, each (B, C, *S)."""
        step = self.advance()
        if self.training:
            with torch.no_grad():
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        frozen = step < self.freeze_prototypes_iterations
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight  # (K, D)
        z = self.embed(views)
        scores = [f @ weight.t() for f in z]  # (B, K) per view
        length = self.queue.shape[1]
        queue_scores = None
        if length and int(self.queue_filled) == length:
            queue_scores = [q @ weight.detach().t() for q in self.queue]
        g = self.num_global_views
        loss = self.criterion(scores[:g], scores[g:], queue_scores)
        if self.training and length:
            self.push([f.detach() for f in z[:g]])
        return {"loss": loss, "prototypes_frozen": torch.tensor(float(frozen))}
