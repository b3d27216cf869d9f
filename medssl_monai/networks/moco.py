"""MoCo v2: a query encoder trained to pick its key, from a momentum encoder, out of a queue of negatives.

He et al. 2020 / Chen et al. 2020. The query path is backbone + MLP head (2048-2048-128); the key path is
its momentum copy (m = 0.999). Keys of past batches wait in a queue of ``queue_size`` (gathered from every
rank under DDP), which is a buffer: checkpoints carry it. Under DDP the key encoder's batch norm sees a
shuffled batch (MoCo's "shuffling BN"), so it cannot cheat through batch statistics; on GPUs
synchronised batch norm is the alternative (``shuffle_bn=False`` with converted SyncBatchNorm layers).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from medssl_monai.losses.info_nce import InfoNCELoss
from medssl_monai.networks.base import JointEmbeddingMethod
from medssl_monai.networks.heads import mlp_head
from medssl_monai.networks.momentum import momentum_copy
from medssl_monai.utils.distributed import gather, world_size

__all__ = ["MoCo"]


class MoCo(JointEmbeddingMethod):
    """MoCo v2 on a torchvision ResNet.

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 (CT as is) or 3.
        spatial_dims: 2 (slices, torchvision's ResNet) or 3 (volumes, MONAI's ``ResNet``, one channel).
        hidden_dim, out_dim: the MLP head (2048-2048-128 for ResNet50).
        queue_size: negatives kept (65,536 in the paper).
        temperature: softmax temperature (0.2 for MoCo v2; the reference study used 0.07).
        momentum: key encoder momentum.
        dataset_size: when given and smaller than ``queue_size``, the queue is shrunk to it (with a warning):
            a longer queue would hold several stale keys of every image.
        shuffle_bn: shuffle the key batch across ranks under DDP.
    """

    momentum_pairs = (("momentum_backbone", "backbone"), ("momentum_head", "head"))

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        spatial_dims: int = 2,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        dataset_size: int | None = None,
        shuffle_bn: bool = True,
    ) -> None:
        super().__init__(backbone, in_channels, spatial_dims)
        if dataset_size is not None and queue_size > dataset_size:
            warnings.warn(f"MoCo queue of {queue_size} keys is larger than the dataset ({dataset_size} images); "
                          f"shrinking it to {dataset_size}", stacklevel=2)
            queue_size = dataset_size
        self.head = mlp_head(self.backbone.feature_dim, hidden_dim, out_dim, batch_norm=False)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_head = momentum_copy(self.head)
        self.momentum, self.shuffle_bn = momentum, shuffle_bn
        self.criterion = InfoNCELoss(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum_at(self, step: int) -> float:
        """The key encoder's momentum, constant."""
        return self.momentum

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` (N, D), wrapping around the end of the queue."""
        size = len(self.queue)
        keys = keys[-size:]
        index = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[index] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys (B, D) from the momentum encoder; the batch is shuffled across ranks under DDP."""
        shuffle = self.shuffle_bn and self.training and world_size() > 1
        if shuffle:
            everything = gather(x)  # (B * world, C, *S)
            order = torch.randperm(len(everything), device=x.device)
            dist.broadcast(order, src=0)
            rank, b = dist.get_rank(), len(x)
            x = everything[order[rank * b:(rank + 1) * b]]
        k = F.normalize(self.momentum_head(self.momentum_backbone(x)), dim=1)
        if shuffle:
            k = gather(k)[torch.argsort(order)][rank * b:(rank + 1) * b]  # this rank's samples, in order
        return k

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """views: [query view, key view], each (B, C, *S)."""
        self.advance()
        q = F.normalize(self.head(self.backbone(views[0])), dim=1)  # (B, D)
        k = self.keys(views[1])  # (B, D)
        loss = self.criterion(q, k, self.queue.clone().detach())
        if self.training:
            self.enqueue(gather(k))
        return {"loss": loss, "positive_similarity": (q * k).sum(dim=1).mean().detach()}
