"""Evaluate a trained classifier on the test split: metrics.json, a confusion matrix and ROC curves."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medssl_monai.engines.checkpoint import load_checkpoint
from medssl_monai.evaluation.metrics import METRICS, classification_metrics
from medssl_monai.evaluation.plots import plot_confusion_matrix, plot_roc
from medssl_monai.utils import write_json

__all__ = ["ClassificationReport"]

logger = logging.getLogger(__name__)


class ClassificationReport:
    """Run ``network`` (weights from ``checkpoint``) over ``dataloader`` and write the test report.

    Args:
        network: the classifier; its output (B, C) are logits.
        dataloader: dict batches with ``image`` and ``label``.
        output_dir: where ``metrics.json``, ``confusion_matrix.png`` and ``roc_curve.png`` go.
        class_names: names of the C classes.
        device: where the network runs.
        checkpoint: a plain state_dict (``models/model.pt``) loaded first; ``None`` uses the weights as they are.
        n_bootstrap, seed: of the 95% intervals.
        extra: key-value pairs recorded in ``metrics.json`` (label fraction, pre-trained checkpoint, ...).
    """

    def __init__(self, network: nn.Module, dataloader: Iterable, output_dir: str | os.PathLike,
                 class_names: Sequence[str], device: torch.device | str = "cpu",
                 checkpoint: str | os.PathLike | None = None, n_bootstrap: int = 1000, seed: int = 0,
                 extra: dict | None = None) -> None:
        self.network, self.dataloader, self.output_dir = network, dataloader, Path(output_dir)
        self.class_names, self.device, self.checkpoint = list(class_names), torch.device(device), checkpoint
        self.n_bootstrap, self.seed, self.extra = n_bootstrap, seed, dict(extra or {})

    @torch.no_grad()
    def predict(self) -> tuple[np.ndarray, np.ndarray, list | None]:
        """(labels (N,), probabilities (N, C), patient ids (N,) or None when the samples carry none) over the
        whole dataloader."""
        net = getattr(self.network, "module", self.network)
        if self.checkpoint is not None:
            net.load_state_dict(load_checkpoint(self.checkpoint))
        net.eval()
        labels, probs, patients = [], [], []
        for batch in self.dataloader:
            logits = net(torch.as_tensor(batch["image"]).to(self.device))  # (B, C)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(torch.as_tensor(batch["label"]).long().view(-1))
            patients += list(batch["patient"]) if "patient" in batch else []
        labels = torch.cat(labels).numpy()
        return labels, torch.cat(probs).numpy(), [str(p) for p in patients] if len(patients) == len(labels) else None

    def run(self) -> dict:
        """Predict, compute the metrics with intervals, write the report; returns the metrics."""
        labels, probs, patients = self.predict()
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"the network gives {probs.shape[1]} outputs but {len(self.class_names)} class names "
                             f"are configured ({self.class_names})")
        metrics = classification_metrics(labels, probs, self.n_bootstrap, self.seed, groups=patients)
        report = {"classes": self.class_names, "checkpoint": str(self.checkpoint), **self.extra, **metrics}
        write_json(self.output_dir / "metrics.json", report)
        plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), self.class_names,
                              self.output_dir / "confusion_matrix.png", f"test set, n = {len(labels)}")
        plot_roc(labels, probs, self.class_names, self.output_dir / "roc_curve.png", f"test set, n = {len(labels)}")
        summary = ", ".join(f"{k} {metrics[k]['value']:.3f} [{metrics[k]['ci_low']:.3f}, {metrics[k]['ci_high']:.3f}]"
                            for k in METRICS)
        logger.info(f"test ({len(labels)} images, intervals resampling {metrics['n_resampled']} "
                    f"{metrics['resampled']}): {summary}; written to {self.output_dir}")
        return report
