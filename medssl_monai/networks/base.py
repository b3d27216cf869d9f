"""What the joint-embedding methods (MoCo v2, BYOL, SwAV) have in common: a backbone under ``backbone.`` and an
iteration counter that travels in the state_dict."""

from __future__ import annotations

import torch
from torch import nn

from medssl_monai.networks.backbones import resnet

__all__ = ["JointEmbeddingMethod"]


class JointEmbeddingMethod(nn.Module):
    """Base of the methods that compare embeddings of augmented views.

    ``forward(views)`` takes a list of (B, C, H, W) tensors and returns a dict with a scalar ``loss``.
    ``step`` counts training forward passes; schedules inside a method (BYOL's EMA, SwAV's prototype
    freezing) read it, and since it is a buffer a resumed run continues them where they stopped.
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1) -> None:
        super().__init__()
        self.backbone = resnet(backbone, in_channels)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, D), for monitoring (k-NN, collapse)."""
        return self.backbone(x)

    def advance(self) -> int:
        """The current step during training (then counted); unchanged in eval mode."""
        step = int(self.step)
        if self.training:
            self.step += 1
        return step
