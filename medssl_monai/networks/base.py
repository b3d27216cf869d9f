"""What the joint-embedding methods (MoCo v2, BYOL, SwAV) have in common: a backbone under ``backbone.``, an
iteration counter that travels in the state_dict, and the momentum update the training loop calls after the
optimiser step."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from medssl_monai.networks.backbones import backbone_network
from medssl_monai.networks.momentum import ema_update_

__all__ = ["JointEmbeddingMethod"]


class JointEmbeddingMethod(nn.Module):
    """Base of the methods that compare embeddings of augmented views.

    ``forward(views)`` takes a list of (B, C, *S) tensors, slices (H, W) or volumes (X, Y, Z) as
    ``spatial_dims`` says, and returns a dict with a scalar ``loss``.
    ``step`` counts training forward passes; schedules inside a method (BYOL's EMA, SwAV's prototype
    freezing) read it, and since it is a buffer a resumed run continues them where they stopped.

    A method with momentum copies lists them in ``momentum_pairs`` as (target attribute, online attribute)
    and gives its coefficient by :meth:`momentum_at`; the trainer calls :meth:`update_momentum` after each
    optimiser step.

    ``batch_views`` is :meth:`per_view`'s choice, for the methods that pass several views through one network
    (BYOL, SwAV; MoCo's query and key go through different networks, so it takes no such id).
    """

    momentum_pairs: tuple[tuple[str, str], ...] = ()

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1, spatial_dims: int = 2,
                 batch_views: bool = True) -> None:
        super().__init__()
        self.backbone = backbone_network(backbone, in_channels, spatial_dims)
        self.spatial_dims, self.batch_views = spatial_dims, batch_views
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, D), for monitoring (k-NN, collapse)."""
        return self.backbone(x)

    def per_view(self, net: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
        """``net`` of every view, in order. With ``batch_views`` the views of one size go through ``net`` as one
        batch (one pass; batch norm takes its statistics over them together), else each view in a pass of its
        own (batch norm per view)."""
        if not self.batch_views:
            return [net(v) for v in views]
        out = []
        for _, group in itertools.groupby(views, key=lambda v: v.shape[2:]):
            group = list(group)
            out.extend(net(torch.cat(group)).split(len(group[0])))  # (n B, ...) -> n x (B, ...)
        return out

    def advance(self) -> int:
        """The current step during training (then counted); unchanged in eval mode."""
        step = int(self.step)
        if self.training:
            self.step += 1
        return step

    def momentum_at(self, step: int) -> float:
        """The EMA coefficient for the update after ``step`` training forward passes."""
        raise NotImplementedError(f"{type(self).__name__} lists momentum_pairs but gives no momentum_at")

    @torch.no_grad()
    def update_momentum(self) -> None:
        """Move every momentum copy toward its online network (after the optimiser step); no-op without copies."""
        if not self.momentum_pairs:
            return
        targets = [getattr(self, target) for target, _ in self.momentum_pairs]
        onlines = [getattr(self, online) for _, online in self.momentum_pairs]
        ema_update_(targets, onlines, self.momentum_at(int(self.step)))
