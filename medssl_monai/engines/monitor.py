"""Watching representation quality during pre-training: k-NN accuracy and MONAI's collapse indicators.

Every ``interval`` epochs the method's pooled encoder features (``network.encode``) are computed for a small
labelled set, and two things are logged to TensorBoard: the accuracy of a weighted k-NN classifier (train
split as memory, validation split as queries; cosine similarity, votes weighted by exp(sim / T), as in Wu et
al. 2018), and MONAI's :class:`~monai.metrics.EmbeddingCollapseMetric` of the validation features (scores in
[0, 1], higher = more collapsed). A rising k-NN accuracy says the features learn something about the labels;
a collapse score near 1 says the method is mapping everything to one point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.metrics import EmbeddingCollapseMetric
from monai.transforms import Resized
from torch import nn

from medssl_monai.data.downstream import downstream_dataset
from medssl_monai.engines.trainer import is_main_process

__all__ = ["RepresentationMonitor", "knn_predict"]

logger = logging.getLogger(__name__)


def knn_predict(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predicted labels (Q,) of ``queries`` (Q, D) by a similarity-weighted vote of their ``k`` nearest
    ``memory`` (N, D) features (cosine similarity)."""
    sim = F.normalize(queries, dim=1) @ F.normalize(memory, dim=1).t()  # (Q, N)
    top, index = sim.topk(min(k, len(memory)), dim=1)  # (Q, k)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    votes.scatter_add_(1, memory_labels[index], (top / temperature).exp())
    return votes.argmax(dim=1)


class RepresentationMonitor:
    """Log ``knn/accuracy`` and ``collapse/<indicator>`` every ``interval`` epochs.

    Args:
        network: the method (DDP-wrapped or not); it must have ``encode(images) -> (B, D)``.
        data_dir: a labelled set in a downstream layout (its ``train`` split is the k-NN memory, ``val`` the
            queries); ``None`` or a missing folder turns monitoring off with a log line.
        log_dir: TensorBoard folder (the training log's).
        image_size: images are resized to the pre-training size.
        window, in_channels: as in pre-training.
        layout, encoding: of the labelled set (see :func:`~medssl_monai.data.downstream_dataset`).
        interval: epochs between measurements (0: off).
        k, temperature: of the k-NN vote.
        batch_size: for the feature pass.
    """

    def __init__(
        self,
        network: nn.Module,
        data_dir: str | os.PathLike | None,
        log_dir: str | os.PathLike,
        image_size: int,
        window: str | Sequence[float] = "full",
        in_channels: int = 1,
        layout: str = "class_folders",
        encoding: str = "hu16",
        interval: int = 1,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 32,
    ) -> None:
        self.network = getattr(network, "module", network)  # features need no DDP synchronisation
        self.data_dir, self.log_dir, self.interval = data_dir, str(log_dir), interval
        self.data_args = {"layout": layout, "encoding": encoding, "window": window, "in_channels": in_channels,
                          "transform": Resized("image", spatial_size=(image_size, image_size))}
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.collapse = EmbeddingCollapseMetric(reduction="max")
        self.writer = None

    def attach(self, engine: Engine) -> None:
        if not self.interval or not is_main_process():
            return
        if self.data_dir is None or not Path(self.data_dir).is_dir():
            logger.info(f"no labelled set at {self.data_dir}: k-NN and collapse monitoring are off")
            return
        self.train_data = downstream_dataset(path=self.data_dir, split="train", **self.data_args)
        self.val_data = downstream_dataset(path=self.data_dir, split="val", **self.data_args)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def features(self, data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) features and (N,) labels of a labelled dataset."""
        feats, labels = [], []
        for batch in DataLoader(data, batch_size=self.batch_size, num_workers=0):
            feats.append(self.network.encode(batch["image"].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).long().view(-1))
        return torch.cat(feats), torch.cat(labels)

    def measure(self, device: torch.device) -> dict[str, float]:
        """k-NN accuracy and collapse scores of the current encoder."""
        was_training = self.network.training
        self.network.eval()
        try:
            memory, memory_labels = self.features(self.train_data, device)
            queries, labels = self.features(self.val_data, device)
        finally:
            self.network.train(was_training)
        num_classes = int(max(memory_labels.max(), labels.max())) + 1
        predicted = knn_predict(memory, memory_labels, queries, num_classes, self.k, self.temperature)
        result = {"knn/accuracy": (predicted == labels).float().mean().item()}
        for name, value in self.collapse(queries, labels).items():
            if value is not None:
                result[f"collapse/{name}"] = float(value)
        return result

    def __call__(self, engine: Engine) -> None:
        result = self.measure(engine.state.device)
        for name, value in result.items():
            self.writer.add_scalar(name, value, engine.state.iteration)
        self.writer.flush()
        logger.info(f"epoch {engine.state.epoch}: k-NN accuracy {result['knn/accuracy']:.3f}, collapse "
                    f"{result.get('collapse/aggregate', float('nan')):.3f}")
