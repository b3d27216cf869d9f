"""Watching representation quality during pre-training: k-NN accuracy and MONAI's collapse indicators.

Every ``interval`` epochs the method's pooled encoder features (``network.encode``) are computed for a small
labelled set (its ``train`` split is the memory, its ``val`` split the queries) and logged to TensorBoard:

- ``knn/accuracy`` of a weighted k-NN classifier (cosine similarity, votes weighted by exp(sim / T), as in
  Wu et al. 2018), with its 95 % Wilson interval (``knn/accuracy_low``, ``knn/accuracy_high``) and the sizes of
  the query and memory sets (``knn/queries``, ``knn/memory``): on 24 queries one image moves it by 0.042.
- ``collapse/effective_rank`` and ``collapse/class_rank_<label>``: MONAI's effective-rank indicators
  (:func:`monai.metrics.compute_embedding_collapse`) of all monitored features, globally and per class; 0 is a
  flat spectrum, 1 is every image mapped to one point (or one line: rank 1).

Why only the rank indicators: MONAI's ``centroid_similarity`` and ``separation`` measure how far apart the
classes are, not collapse. On pooled features after a ReLU, which are all positive, the class centroids point
the same way and ``centroid_similarity`` is about 1 for every encoder (measured: a random-init ResNet gives
0.999-1.0), so its ``max`` aggregate read "collapsed" throughout healthy runs. Centred over the set it is
identically 0 for two classes (the centroids are then anti-parallel), and both it and ``separation`` give 0.5
for a constant encoder, the same as for a random one. Class separation is what the k-NN accuracy reports.
The rank indicators centre the features themselves (globally, or per class), which is the preparation they
assume; nothing else is done to the features.

A guard, like the stop on a non-finite loss: an indicator at or above ``collapse_threshold`` is a warning, and
``collapse_patience`` consecutive measurements there stop the run with :class:`RepresentationCollapseError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.metrics import compute_embedding_collapse
from monai.transforms import Resized
from scipy.stats import binomtest
from torch import nn

from medssl_monai.data.downstream import downstream_dataset
from medssl_monai.utils.distributed import is_main_process
from medssl_monai.evaluation.probes import knn_predict

__all__ = ["RepresentationMonitor", "RepresentationCollapseError", "collapse_indicators", "wilson_interval"]

logger = logging.getLogger(__name__)

WHAT_TO_TRY = (
    "lower the learning rate or lengthen its warm-up; check that the inputs vary (a constant or all-padding "
    "crop collapses every method) and that the two views differ (augmentations too weak let the contrastive "
    "methods match views without features); for MoCo raise the temperature or the queue, for BYOL keep the "
    "predictor's learning rate and the EMA momentum at their defaults, for SwAV freeze the prototypes longer"
)


class RepresentationCollapseError(RuntimeError):
    """The encoder's features stayed collapsed for ``collapse_patience`` measurements."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (scipy's)."""
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def collapse_indicators(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """MONAI's rank-based collapse indicators of ``features`` (N, D) with class ``labels`` (N,), in [0, 1],
    higher = more collapsed: ``effective_rank`` (all features) and ``class_rank_<label>`` (each class with at
    least 2 samples). See the module docstring for why the class-separation indicators are left out."""
    scores = compute_embedding_collapse(features.float(), labels.long(), reduction="none",
                                        include_indicators=["effective_rank", "per_class_rank"])
    result = {"effective_rank": float(scores["effective_rank_score"])}
    for name, value in scores.items():
        if name.startswith("per_class_rank_") and value is not None:
            result["class_rank_" + name.removeprefix("per_class_rank_")] = float(value)
    return result


class RepresentationMonitor:
    """Log k-NN accuracy (with its interval) and collapse indicators every ``interval`` epochs, and stop a run
    whose features stay collapsed.

    Args:
        network: the method (DDP-wrapped or not); it must have ``encode(images) -> (B, D)``.
        data_dir: a labelled set in a downstream layout (its ``train`` split is the k-NN memory, ``val`` the
            queries); ``None`` or a missing folder turns monitoring off with a log line.
        summary_writer: the run's TensorBoard writer (see :func:`~medssl_monai.utils.summary_writer`).
        image_size: images are resized to the pre-training size.
        window, in_channels: as in pre-training.
        layout, encoding: of the labelled set (see :func:`~medssl_monai.data.downstream_dataset`).
        interval: epochs between measurements (0: off).
        k, temperature: of the k-NN vote.
        batch_size: for the feature pass.
        collapse_threshold: an indicator at or above it is logged as a warning.
        collapse_patience: stop the run when one indicator has been at or above the threshold for this many
            consecutive measurements (``None`` or 0: warn only).

    The latest results are also put in ``engine.state.metrics`` (for the run's summary line).
    """

    def __init__(
        self,
        network: nn.Module,
        data_dir: str | os.PathLike | None,
        summary_writer: Any,
        image_size: int,
        window: str | Sequence[float] = "full",
        in_channels: int = 1,
        layout: str = "class_folders",
        encoding: str = "hu16",
        interval: int = 1,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 32,
        collapse_threshold: float = 0.9,
        collapse_patience: int | None = None,
    ) -> None:
        self.network = getattr(network, "module", network)  # features need no DDP synchronisation
        self.data_dir, self.writer, self.interval = data_dir, summary_writer, interval
        self.data_args = {"layout": layout, "encoding": encoding, "window": window, "in_channels": in_channels,
                          "transform": Resized("image", spatial_size=(image_size, image_size))}
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.collapse_threshold, self.collapse_patience = collapse_threshold, collapse_patience
        self.history: dict[str, list[float]] = {}  # collapse indicator -> its values, one per measurement

    def attach(self, engine: Engine) -> None:
        if not self.interval or not is_main_process():
            return
        if self.data_dir is None or not Path(self.data_dir).is_dir():
            logger.info(f"no labelled set at {self.data_dir}: k-NN and collapse monitoring are off")
            return
        self.train_data = downstream_dataset(path=self.data_dir, split="train", **self.data_args)
        self.val_data = downstream_dataset(path=self.data_dir, split="val", **self.data_args)
        self.writer.add_custom_scalars_marginchart(["knn/accuracy", "knn/accuracy_low", "knn/accuracy_high"],
                                                   category="knn", title="accuracy with its 95% interval")
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
        """k-NN accuracy with its interval and set sizes, and the collapse indicators, of the current encoder."""
        was_training = self.network.training
        self.network.eval()
        try:
            memory, memory_labels = self.features(self.train_data, device)
            queries, labels = self.features(self.val_data, device)
        finally:
            self.network.train(was_training)
        num_classes = int(max(memory_labels.max(), labels.max())) + 1
        predicted = knn_predict(memory, memory_labels, queries, num_classes, self.k, self.temperature)
        correct = int((predicted == labels).sum())
        low, high = wilson_interval(correct, len(labels))
        result = {"knn/accuracy": correct / len(labels), "knn/accuracy_low": low, "knn/accuracy_high": high,
                  "knn/queries": float(len(labels)), "knn/memory": float(len(memory_labels))}
        indicators = collapse_indicators(torch.cat([memory, queries]), torch.cat([memory_labels, labels]))
        result.update({f"collapse/{name}": value for name, value in indicators.items()})
        return result

    def __call__(self, engine: Engine) -> None:
        result = self.measure(engine.state.device)
        for name, value in result.items():
            self.writer.add_scalar(name, value, engine.state.iteration)
        self.writer.flush()
        engine.state.metrics.update(result)
        classes = "/".join(f"{v:.2f}" for k, v in result.items() if k.startswith("collapse/class_rank_"))
        logger.info(
            f"epoch {engine.state.epoch}: k-NN accuracy {result['knn/accuracy']:.3f} "
            f"[{result['knn/accuracy_low']:.3f}, {result['knn/accuracy_high']:.3f}] on {int(result['knn/queries'])} "
            f"val images ({int(result['knn/memory'])} in memory); collapse (0 healthy, 1 collapsed): effective rank "
            f"{result['collapse/effective_rank']:.3f}, per class {classes or 'n/a'}"
        )
        self.check_collapse(engine.state.epoch, {k.removeprefix("collapse/"): v for k, v in result.items()
                                                 if k.startswith("collapse/")})

    def check_collapse(self, epoch: int, indicators: dict[str, float]) -> None:
        """Record ``indicators``; warn for each at or above the threshold, and raise
        :class:`RepresentationCollapseError` when one has stayed there for ``collapse_patience`` measurements."""
        for name, value in indicators.items():
            self.history.setdefault(name, []).append(value)
        patience = self.collapse_patience or 0
        for name, values in self.history.items():
            if values[-1] < self.collapse_threshold:
                continue
            run = next((i for i, v in enumerate(reversed(values)) if v < self.collapse_threshold), len(values))
            recent = ", ".join(f"{v:.3f}" for v in values[-max(run, 1):][-5:])
            if patience and run >= patience:
                raise RepresentationCollapseError(
                    f"representation collapse: collapse/{name} has been >= {self.collapse_threshold} for {run} "
                    f"measurements up to epoch {epoch} (last values {recent}); stopped because collapse_patience is "
                    f"{patience}. What to try: {WHAT_TO_TRY}"
                )
            logger.warning(
                f"epoch {epoch}: collapse/{name} is {values[-1]:.3f} (>= {self.collapse_threshold}) for {run} "
                f"measurement(s) (last values {recent}): the encoder may be collapsing. What to try: {WHAT_TO_TRY}"
                + (f"; the run stops after {patience}" if patience else "; set collapse_patience to stop such runs")
            )
